"""``python -m semiseg_fast.pretrain``: pretrains the small encoder on the embedded world's own
ImageNet (:mod:`semiseg_fast.data.pretrain_corpus`: multi-label shapes and textures, scenes never in
the segmentation sets) and writes its state dict, the weights ``model.pretrained=embedded`` loads.

fp32, deterministic algorithms, a fixed thread count (``--threads``) and a fixed data order:
the same command on the same machine writes the same file, bit for bit. An interrupted run
continues from its last completed epoch with ``--resume`` (the partial state is written
atomically beside ``--out`` after every epoch) and ends with the same file."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import normalize
from .data.pretrain_corpus import NUM_LABELS, PRETRAIN_SEED, PretrainCorpus
from .models.deeplab import SmallEncoder
from .models.pretrained import EMBEDDED_FILE, EMBEDDED_WIDTH, embedded_weights_path
from .train.progress import ProgressBar
from .utils.atomic import atomic_open

VAL_SEED = PRETRAIN_SEED + 1  # held-out corpus scenes: how well the task was learned


class Classifier(nn.Module):
    """The encoder with a multi-label head: a 1x1 convolution scores every label at every position
    of the deepest features and an image's score is the maximum over positions. Objects cover a
    small share of a scene: a mean would dilute them, the maximum asks the features at the object
    itself to know it, which is what segmentation reads from them."""

    def __init__(self, width: int):
        super().__init__()
        self.encoder = SmallEncoder(width)
        self.head = nn.Conv2d(self.encoder.channels[2], NUM_LABELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[2]).mean(dim=(2, 3))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m semiseg_fast.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=EMBEDDED_FILE, help=f"the encoder's state dict (default: ./{EMBEDDED_FILE})")
    p.add_argument("--images", type=int, default=32000, help="corpus scenes (rendered once, 12 KB each)")
    p.add_argument("--val-images", type=int, default=1000, help="held-out scenes for the per-epoch score")
    p.add_argument("--image-size", type=int, default=64, help="side of a scene, in pixels")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-3, help="AdamW's peak rate (linear warm-up, then cosine to 0)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--width", type=int, default=EMBEDDED_WIDTH, help="the small encoder's width")
    p.add_argument("--seed", type=int, default=0, help="the weights' initialisation and the data order")
    p.add_argument("--threads", type=int, default=2, help="torch threads; the same count reproduces the file")
    p.add_argument("--resume", action="store_true", help="continue from the partial state beside --out")
    args = p.parse_args(argv)
    for name in ("images", "val_images", "epochs", "batch_size", "warmup_steps", "threads", "width"):
        value = getattr(args, name)
        if value < (0 if name == "warmup_steps" else 1):
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    if args.image_size < 16:
        p.error(f"--image-size: expected an integer >= 16, got {args.image_size}")
    if args.width < 4 or args.width % 2:
        p.error(f"--width: expected an even integer >= 4, got {args.width}")
    if not (args.lr > 0 and math.isfinite(args.lr)) or not args.weight_decay >= 0:
        p.error("--lr: expected a positive number; --weight-decay: a number >= 0")
    if args.batch_size > args.images:
        p.error(f"--batch-size: expected at most --images={args.images}, got {args.batch_size}")
    return args


def learning_rate(args: argparse.Namespace, step: int, total: int) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
    return args.lr * 0.5 * (1 + math.cos(math.pi * progress))


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the weights: a partial state resumes only under the same settings."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "resume")}


@torch.no_grad()
def score(model: nn.Module, corpus: PretrainCorpus, batch_size: int) -> tuple[float, float]:
    """(mean BCE, F1 of the labels at probability 0.5) over ``corpus``."""
    model.eval()
    loss, tp, fp, fn = 0.0, 0.0, 0.0, 0.0
    for start in range(0, len(corpus), batch_size):
        images, labels = corpus.images[start : start + batch_size], corpus.labels[start : start + batch_size]
        logits = model(normalize(images).contiguous(memory_format=torch.channels_last))
        loss += F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").item()
        hit = logits > 0
        tp += (hit & (labels > 0)).sum().item()
        fp += (hit & (labels == 0)).sum().item()
        fn += (~hit & (labels > 0)).sum().item()
    model.train()
    return loss / labels.shape[1] / len(corpus), 2 * tp / max(1.0, 2 * tp + fp + fn)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(state: dict[str, Any], path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    partial = args.out + ".partial"
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    model = Classifier(args.width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    first_epoch = 0
    if args.resume:
        if not os.path.isfile(partial):
            print(f"error: --resume: no partial state at {partial}", file=sys.stderr)
            return 2
        state = torch.load(partial, map_location="cpu", weights_only=True)
        if state["settings"] != settings(args):
            print(f"error: --resume: {partial} was made with other settings: {state['settings']}", file=sys.stderr)
            return 2
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = state["epoch"]

    t0 = time.perf_counter()
    corpus = PretrainCorpus(args.images, args.image_size, PRETRAIN_SEED)
    held_out = PretrainCorpus(args.val_images, args.image_size, VAL_SEED)
    print(f"rendered {len(corpus)} + {len(held_out)} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    steps_per_epoch = len(corpus) // args.batch_size  # the last partial batch is dropped
    total = steps_per_epoch * args.epochs
    for epoch in range(first_epoch, args.epochs):
        order = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
        bar = ProgressBar(steps_per_epoch, desc=f"pretrain {epoch + 1}/{args.epochs}")
        for i in range(steps_per_epoch):
            index = order[i * args.batch_size : (i + 1) * args.batch_size]
            images = normalize(corpus.images[index]).contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, epoch * steps_per_epoch + i, total)
            loss = F.binary_cross_entropy_with_logits(model(images), corpus.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_metrics(loss=loss.item())
            bar.update(1, images=len(index))
        bar.close()
        val_loss, val_f1 = score(model, held_out, 4 * args.batch_size)
        print(f"epoch {epoch + 1}: held-out BCE {val_loss:.4f}, F1 {val_f1:.3f}", flush=True)
        save({"settings": settings(args), "epoch": epoch + 1, "model": model.state_dict(),
              "optimizer": optimizer.state_dict()}, partial)  # fmt: skip

    save(model.encoder.state_dict(), args.out)
    os.unlink(partial)
    digest = file_sha256(args.out)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes, sha256 {digest} ({time.perf_counter() - t0:.0f} s)")
    shipped = embedded_weights_path()
    if os.path.isfile(shipped):
        same = file_sha256(shipped) == digest
        print(f"{'identical to' if same else 'differs from'} the shipped weights {shipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
