"""``python -m semiseg_fast.eval --checkpoint RUN/best.pt [--split val] [--mode whole|slide]``

Evaluates a training checkpoint (the weights it was validated with: the EMA teacher when the run
had one) on a split of the dataset it was trained on, or of another folder via
``data.root=... data.val_split=...`` overrides; prints per-class IoU and mIoU. It predicts under
the run's autocast setting (``train.amp``, resolved for the device as training's validation
does), so on the machine that trained it it reproduces the mIoU stored in the checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg_fast.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="val", choices=["val", "labeled"])
    parser.add_argument("--mode", choices=["whole", "slide"], help="default: the run's eval.mode")
    parser.add_argument("--window", type=int, help="slide window side (default: the run's eval.window)")
    parser.add_argument(
        "--stride", type=int, help="slide stride, 0 < stride <= window (default: the run's eval.stride)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/data/voc")
    return parser.parse_intermixed_args(argv)


def eval_config(state: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's config with the command line's data.* overrides and eval settings."""
    from .train.config import apply_override, config_from_checkpoint, validate

    config = config_from_checkpoint(state)
    for text in args.overrides:
        if not text.startswith("data."):
            raise ValueError(f"override: only data.* keys apply to evaluation, got {text!r}")
        apply_override(config, text)
    ec = config["eval"]
    for name in ("mode", "window", "stride"):
        if getattr(args, name) is not None:
            ec[name] = getattr(args, name)
    if args.window is not None and args.window < 1:
        raise ValueError(f"--window: expected a positive integer, got {args.window}")
    if args.stride is not None and not 0 < args.stride <= ec["window"]:
        raise ValueError(f"--stride: expected 0 < stride <= window={ec['window']}, got {args.stride}")
    validate(config)  # e.g. a --window below the run's eval.stride: names eval.stride
    return config


def eval_amp(setting: Any, device):
    """Training's autocast dtype for ``device``; fp16 (CUDA only) falls back to fp32 on a CPU."""
    from .train.loop import resolve_amp

    if setting == "fp16" and device.type != "cuda":
        print("note: trained with train.amp=fp16 on CUDA; evaluating in fp32 on the CPU", file=sys.stderr)
        return None
    return resolve_amp(setting, device)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    import torch

    from .data import DataError
    from .train.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(args.checkpoint)
        config = eval_config(state, args)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device: cuda requested, but torch.cuda.is_available() is False")
        device = torch.device(
            "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
        result, dataset = evaluate_checkpoint(state, config, args.split, device)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError, TypeError, DataError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.checkpoint}: step {state['step']}, {args.split} split, {len(dataset)} images")
    print(_format(result, state))


def evaluate_checkpoint(state: dict[str, Any], config: dict[str, Any], split: str, device):
    """(EvalResult, the dataset) of a checkpoint's evaluated weights on a split, under the run's autocast."""

    from .train.data import build_datasets
    from .train.evaluate import evaluate
    from .train.run_model import evaluated_model

    data = build_datasets(config["data"], with_unlabeled=False)
    model = evaluated_model(state, config, device)
    channels_last = config["train"]["channels_last"]
    ec = config["eval"]
    dataset = data.val if split == "val" else data.labeled
    result = evaluate(
        model,
        dataset,
        state["num_classes"],
        device,
        ec["mode"],
        ec["window"],
        ec["stride"],
        ec["batch_size"],
        config["data"]["ignore_index"],
        channels_last=channels_last,
        amp_dtype=eval_amp(config["train"]["amp"], device),
    )
    return result, dataset


def _format(result, state: dict[str, Any]) -> str:
    from .train.evaluate import format_iou_table

    return format_iou_table(result, state.get("class_names") or [str(i) for i in range(state["num_classes"])])


if __name__ == "__main__":
    main()
