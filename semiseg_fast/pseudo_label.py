"""``python -m semiseg_fast.pseudo_label --checkpoint T --out DIR [--scales 0.75 1 1.25] [--flip] [--topk K]``

Runs a trained teacher over the unlabeled split of the dataset it was trained on (or of another
folder, via ``data.*`` overrides) and writes, per image ``ID``:

    DIR/labels/ID.png        hard pseudo-label, uint8 PNG (argmax of the averaged probabilities)
    DIR/confidence/ID.png    max probability, uint8 PNG holding round(255 * p)
    DIR/topk/ID.npz          with --topk K: the K most likely classes (uint8) and their probabilities
                             (float16), for soft labels
    DIR/settings.json        teacher (its checkpoint and a hash of its weights), split, scales, flip, top-k
    DIR/manifest.json        the settings, the images written and those that could not be read

Every file is written to a temporary name and renamed, so an interrupted run leaves no partial
files; rerunning the same command skips the images already written. The settings are recorded
before the first image: a rerun into the same DIR with another teacher, split, scales, flip or
top-k is refused (its files would silently mix with the old ones). With several scales or flips
the probabilities are averaged before the teacher statistics; with one scale and no flip the
statistics come straight from the logits in one fused pass (:func:`semiseg_fast.pixel_stats`).
An unreadable image is reported with its path and skipped; the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import numbers
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.pseudo_labels import (
    FORMAT,
    MANIFEST,
    SETTINGS,
    item_ids,
    label_paths,
    png_bytes,
    remove_stale_temporaries,
    write_file,
)

# settings that change the files written; a rerun into the same folder must repeat them
COMPARED_SETTINGS = ("teacher_sha256", "split", "scales", "flip", "topk", "num_classes", "data")
# the data keys that decide which images a split holds and their size
IMAGE_KEYS = (
    "name",
    "root",
    "labeled_split",
    "unlabeled_split",
    "val_split",
    "synthetic_train",
    "synthetic_val",
    "image_size",
    "labeled_fraction",
)


@torch.no_grad()
def teacher_probabilities(model, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False):
    """(N, C, H, W) probabilities averaged over scales and horizontal flips, or, for one scale and no
    flip, the logits themselves (the caller then takes statistics from logits). ``images``: normalised."""
    from .models import model_outputs

    size = images.shape[-2:]
    if tuple(scales) == (1.0,) and not flip:
        logits = model_outputs(model(images))[0]
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True), True
    total, count = None, 0
    for s in scales:
        x = (
            images
            if s == 1.0
            else F.interpolate(
                images,
                size=(max(8, round(size[0] * s)), max(8, round(size[1] * s))),
                mode="bilinear",
                align_corners=True,
            )
        )
        for flipped in (False, True) if flip else (False,):
            logits = model_outputs(model(x.flip(-1) if flipped else x))[0]
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)
            prob = (logits.flip(-1) if flipped else logits).softmax(dim=1)
            total = prob if total is None else total + prob
            count += 1
    return total / count, False


def weights_sha256(weights: dict[str, Any]) -> str:
    """A hash of a state dict's names, dtypes, shapes and values: identifies a teacher wherever its
    checkpoint lies, and tells a retrained one apart from the file it replaced."""
    h = hashlib.sha256()
    for name in sorted(weights):
        value = weights[name]
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{name}:{value!r}".encode())
    return h.hexdigest()


def _check_arguments(scales: Sequence[float], flip: bool, topk: int, split: str, batch_size: int, device: str) -> None:
    if not scales or any(
        isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s <= 0 for s in scales
    ):
        raise ValueError(f"scales (--scales): expected positive numbers, got {list(scales)!r}")
    if not isinstance(flip, bool):
        raise TypeError(f"flip (--flip): expected a bool, got {flip!r}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise ValueError(f"topk (--topk): expected an integer >= 0, got {topk!r}")
    if split not in ("unlabeled", "labeled", "val"):
        raise ValueError(f"split (--split): expected 'unlabeled', 'labeled' or 'val', got {split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (--batch-size): expected an integer >= 1, got {batch_size!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device (--device): expected 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device (--device): cuda requested, but torch.cuda.is_available() is False")


def _recorded_settings(out_dir: str) -> dict[str, Any] | None:
    """The settings an earlier run recorded in ``out_dir`` (a folder from before settings.json:
    its manifest, which has all but the teacher's hash), or None for a new folder."""
    for name in (SETTINGS, MANIFEST):
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"--out: cannot read {path!r}: {e}") from e
    return None


def _comparable(settings: dict[str, Any], key: str) -> Any:
    value = settings[key]
    if key != "data" or not isinstance(value, dict):
        return value
    data = {k: value.get(k) for k in IMAGE_KEYS}
    if isinstance(data["root"], str):  # one folder by any path
        data["root"] = os.path.realpath(data["root"])
    return data


def _check_same_settings(out_dir: str, settings: dict[str, Any]) -> None:
    recorded = _recorded_settings(out_dir)
    if recorded is None:
        return
    differ = [k for k in COMPARED_SETTINGS if k in recorded and _comparable(recorded, k) != _comparable(settings, k)]
    if not differ:
        return
    described = []
    for key in differ:
        if key == "teacher_sha256":
            described.append(
                f"teacher {recorded.get('checkpoint')!r} at step {recorded.get('step')} there, "
                f"{settings['checkpoint']!r} at step {settings['step']} now (other weights)"
            )
        else:
            described.append(f"{key} {_comparable(recorded, key)!r} there, {_comparable(settings, key)!r} now")
    raise ValueError(
        f"--out: {out_dir!r} holds pseudo-labels made with other settings ({'; '.join(described)}); "
        "choose another --out, or delete the folder to make them again"
    )


def generate(
    checkpoint: str,
    out_dir: str,
    split: str = "unlabeled",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    topk: int = 0,
    overrides: Sequence[str] = (),
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the pseudo-labels and returns the manifest (see the module docstring)."""
    from .data import DataError, normalize
    from .ops import pixel_stats
    from .train.checkpoint import load_checkpoint
    from .train.config import apply_override, config_from_checkpoint, validate
    from .train.data import build_datasets
    from .train.progress import ProgressBar
    from .train.run_model import build_run_model

    _check_arguments(scales, flip, topk, split, batch_size, device)
    state = load_checkpoint(checkpoint)
    config = config_from_checkpoint(state)
    for text in overrides:
        if not text.startswith("data."):
            raise ValueError(f"override: only data.* keys apply to pseudo-labelling, got {text!r}")
        apply_override(config, text)
    validate(config)
    num_classes = int(state["num_classes"])
    if topk > num_classes:
        raise ValueError(f"topk (--topk): expected at most num_classes={num_classes}, got {topk}")
    data = build_datasets(config["data"], with_unlabeled=split == "unlabeled")
    dataset = {"unlabeled": data.unlabeled, "labeled": data.labeled, "val": data.val}[split]
    if dataset is None:
        raise ValueError(f"split (--split): the dataset of {checkpoint!r} has no {split} images")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    weights = state["teacher"] if state.get("teacher") is not None else state["model"]
    model = build_run_model(config, num_classes)
    model.load_state_dict(weights)
    fmt = torch.channels_last if config["train"]["channels_last"] else torch.contiguous_format
    model.to(dev, memory_format=fmt).eval()

    settings = {
        "checkpoint": os.path.abspath(checkpoint),
        "step": state.get("step"),
        "teacher_sha256": weights_sha256(weights),
        "split": split,
        "scales": list(map(float, scales)),
        "flip": bool(flip),
        "topk": topk,
        "num_classes": num_classes,
        "data": config["data"],
    }
    _check_same_settings(out_dir, settings)
    os.makedirs(out_dir, exist_ok=True)
    write_file(os.path.join(out_dir, SETTINGS), json.dumps(settings, indent=1).encode())  # before any image
    remove_stale_temporaries(out_dir)
    ids = item_ids(dataset)
    written = lambda i: all(os.path.isfile(p) for p in label_paths(out_dir, ids[i], topk).values())
    todo = [i for i in range(len(dataset)) if not written(i)]
    failed: list[dict[str, Any]] = []
    bar = ProgressBar(len(todo), desc="pseudo-labels", enabled=progress)
    pending: list[tuple] = []

    def flush() -> None:
        images = torch.stack([img for _, img in pending])
        x = normalize(images).to(dev).contiguous(memory_format=fmt)
        out, are_logits = teacher_probabilities(model, x, scales, flip)
        stats = pixel_stats(out.float() if are_logits else out.clamp_min(1e-30).log())
        top = None
        if topk:
            top = torch.topk(out.float().softmax(dim=1) if are_logits else out, topk, dim=1)
        for j, (i, _) in enumerate(pending):
            paths = label_paths(out_dir, ids[i], topk)
            if top is not None:
                buf = io.BytesIO()
                np.savez_compressed(
                    buf,
                    classes=top.indices[j].to(torch.uint8).cpu().numpy(),
                    probs=top.values[j].to(torch.float16).cpu().numpy(),
                )
                write_file(paths["topk"], buf.getvalue())
            conf = (stats.confidence[j] * 255).round().to(torch.uint8).cpu().numpy()
            write_file(paths["confidence"], png_bytes(conf))
            write_file(paths["label"], png_bytes(stats.label[j].to(torch.uint8).cpu().numpy()))  # last: marks done
        bar.update(len(pending), images=len(pending))
        pending.clear()

    for i in todo:
        try:
            image, _ = dataset[i]
        except DataError as e:
            failed.append({"index": i, "id": ids[i], "error": str(e)})
            bar.write(f"skipped: {e}")
            bar.update(1)
            continue
        if pending and (len(pending) == batch_size or pending[0][1].shape != image.shape):
            flush()
        pending.append((i, image))
    if pending:
        flush()
    bar.close()
    done = [{"index": i, "id": ids[i]} for i in range(len(dataset)) if written(i)]
    manifest = {
        "format": FORMAT,
        **settings,
        "split_size": len(dataset),
        "class_names": state.get("class_names"),
        "confidence_encoding": "uint8 PNG = round(255 * max probability)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "items": done,
        "failed": failed,
    }
    write_file(os.path.join(out_dir, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg_fast.pseudo_label",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (its EMA teacher if it has one)")
    parser.add_argument("--out", required=True, help="output folder (created; rerun to resume)")
    parser.add_argument("--split", default="unlabeled", choices=["unlabeled", "labeled", "val"])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="e.g. 0.75 1 1.25")
    parser.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    parser.add_argument("--topk", type=int, default=0, help="store the K most likely classes for soft labels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/data/voc")
    args = parser.parse_intermixed_args(argv)
    from .data import DataError

    try:
        manifest = generate(
            args.checkpoint,
            args.out,
            args.split,
            args.scales,
            args.flip,
            args.topk,
            args.overrides,
            args.batch_size,
            args.device,
            not args.no_progress,
        )
    except (FileNotFoundError, RuntimeError, KeyError, ValueError, TypeError, DataError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(manifest['items'])} of {manifest['split_size']} images pseudo-labelled in {args.out}")
    if manifest["failed"]:
        print(f"{len(manifest['failed'])} image(s) could not be read:", file=sys.stderr)
        for f in manifest["failed"]:
            print(f"  {f['error']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
