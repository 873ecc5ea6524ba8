"""``python -m semiseg_fast.eval --checkpoint RUN/best.pt [--split val] [--mode whole|slide]``

Evaluates a training checkpoint (the weights it was validated with: the EMA teacher when the run
had one) on a split of the dataset it was trained on, or of another folder via
``data.root=... data.val_split=...`` overrides; prints per-class IoU and mIoU."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m semiseg_fast.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="val", choices=["val", "labeled"])
    parser.add_argument("--mode", choices=["whole", "slide"], help="default: the run's eval.mode")
    parser.add_argument("--window", type=int)
    parser.add_argument("--stride", type=int)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/data/voc")
    args = parser.parse_intermixed_args(argv)

    import torch

    from .train.checkpoint import load_checkpoint
    from .train.config import config_from_checkpoint, merge, parse_override, validate
    from .train.data import build_datasets
    from .train.evaluate import evaluate, format_iou_table
    from .train.loop import build_run_model

    try:
        state = load_checkpoint(args.checkpoint)
        config = config_from_checkpoint(state)
        for text in args.overrides:
            if not text.startswith("data."):
                raise ValueError(f"override: only data.* keys apply to evaluation, got {text!r}")
            merge(config, parse_override(text), "")
        validate(config)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError, TypeError) as e:
        sys.exit(f"error: {e}")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    data = build_datasets(config["data"], with_unlabeled=False)
    model = build_run_model(config, state["num_classes"])
    model.load_state_dict(state["teacher"] if state.get("teacher") is not None else state["model"])
    model.to(device)
    ec = config["eval"]
    dataset = data.val if args.split == "val" else data.labeled
    result = evaluate(model, dataset, state["num_classes"], device, args.mode or ec["mode"], args.window or ec["window"],
                      args.stride or ec["stride"], ec["batch_size"], config["data"]["ignore_index"],
                      channels_last=config["train"]["channels_last"])
    print(f"{args.checkpoint}: step {state['step']}, {args.split} split, {len(dataset)} images")
    print(format_iou_table(result, state.get("class_names") or [str(i) for i in range(state["num_classes"])]))


if __name__ == "__main__":
    main()
