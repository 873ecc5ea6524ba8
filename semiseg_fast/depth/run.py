"""``python -m semiseg_fast.depth``: trains a depth network and a pose network without labels on
clips (t-1, t, t+1), Monodepth2's way (:mod:`.objective`), and scores the depth against the
true depth of the validation clips (median-scaled abs-rel and delta < 1.25, :mod:`.evaluate`).

Both networks start from the shipped pretrained encoder (the depth network from all of it, the
pose network from its stem and first stage, :class:`.networks.PoseNet`). The run
folder (``--out``) holds ``last.pt`` (written atomically after every epoch, the one before kept
as ``previous.pt``; ``--resume`` continues from it), ``metrics.csv`` (one row per epoch),
``depth.png`` (validation clips, predicted and true depth) and, at the end, ``depth.pt``: the
trained networks' state dicts (``encoder``, ``depth``, ``pose``)."""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data import CityscapesClips, SyntheticClips, normalize
from ..models.deeplab import SmallEncoder
from ..models.pretrained import EMBEDDED_WIDTH, load_pretrained
from ..train.checkpoint import LAST, CheckpointError, load_checkpoint, save_atomic
from ..train.progress import ProgressBar
from ..train.run_folder import check_writable
from ..utils.atomic import atomic_open
from .evaluate import depth_errors, median_baseline
from .figure import save_depth_figure
from .networks import DepthNet, PoseNet, disparity_to_depth
from .objective import depth_loss

TRAIN_SEED, VAL_SEED = 0, 1  # the segmentation data set's pools: frame t is its image
WEIGHTS = "depth.pt"
FIGURE_CLIPS = 4
LR_DROP = 0.75  # the rate drops tenfold after this share of the epochs, as Monodepth2's schedule


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m semiseg_fast.depth", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/depth", help="the run folder (default: runs/depth)")
    p.add_argument("--data", choices=("synthetic", "cityscapes"), default="synthetic")
    p.add_argument("--images", type=int, default=800, help="synthetic training clips (the segmentation pool)")
    p.add_argument("--val-images", type=int, default=120, help="synthetic validation clips")
    p.add_argument("--image-size", type=int, default=64, help="side of a synthetic clip, in pixels")
    p.add_argument("--root", help="cityscapes: the folder with leftImg8bit_sequence/, camera/ and disparity/")
    p.add_argument("--train-split", default="train.txt", help="cityscapes: split file of the training clips")
    p.add_argument("--val-split", default="val.txt", help="cityscapes: split file of the validation clips")
    p.add_argument("--size", type=int, nargs=2, default=(192, 384), metavar=("H", "W"), help="cityscapes: frame size")
    p.add_argument("--epochs", type=int, default=60, help="passes over the training clips (66 steps each by default)")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-4, help="the depth network's Adam rate (tenfold lower at the end)")
    p.add_argument("--pose-lr", type=float, default=1e-3, help="the pose network's Adam rate (the same schedule)")
    p.add_argument(
        "--encoder-lr", type=float, help="the depth network encoder's Adam rate (the same schedule; default: --lr)"
    )
    p.add_argument(
        "--frozen-epochs", type=int, default=0,
        help="the first epochs train the depth decoder only: its encoder's weights and statistics stay as they started",
    )  # fmt: skip
    p.add_argument(
        "--feature-distance", type=float, default=0.0,
        help="weight of the depth encoder's feature distance from its start (Hoyer et al.'s, 1e-2 there); 0: none",
    )  # fmt: skip
    p.add_argument("--smoothness", type=float, default=1e-3, help="weight of the edge-aware smoothness (Monodepth2's)")
    p.add_argument("--ssim-weight", type=float, default=0.85, help="SSIM's share of the photometric error")
    p.add_argument(
        "--blur", type=float, default=0.0, help="Gaussian sigma (pixels) of the frames the losses compare; 0: none"
    )
    p.add_argument(
        "--pretrained", default="embedded", help="both encoders' start (depth, pose): embedded | none | a weights file"
    )
    p.add_argument("--width", type=int, default=32, help="the small encoder's width")
    p.add_argument("--seed", type=int, default=0, help="the networks' initialisation and the data order")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (0: on the training thread)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    args = p.parse_args(argv)
    for name in ("images", "val_images", "epochs", "batch_size", "threads", "workers"):
        if getattr(args, name) < (0 if name == "workers" else 1):
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.image_size < 16:
        p.error(f"--image-size: expected an integer >= 16, got {args.image_size}")
    if args.width < 4 or args.width % 2:
        p.error(f"--width: expected an even integer >= 4, got {args.width}")
    for name in ("lr", "pose_lr", "encoder_lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    for name in ("smoothness", "feature_distance"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            p.error(f"--{name.replace('_', '-')}: expected a number >= 0, got {getattr(args, name)}")
    if not 0 <= args.frozen_epochs <= args.epochs:
        p.error(f"--frozen-epochs: expected an integer in [0, --epochs={args.epochs}], got {args.frozen_epochs}")
    if args.feature_distance > 0 and args.pretrained == "none":
        p.error("--feature-distance: the distance is from the pretrained start; it needs --pretrained other than none")
    if not (math.isfinite(args.blur) and args.blur >= 0):
        p.error(f"--blur: expected a number >= 0, got {args.blur}")
    if not 0 <= args.ssim_weight <= 1:
        p.error(f"--ssim-weight: expected a number in [0, 1], got {args.ssim_weight}")
    if args.pretrained not in ("embedded", "none") and not os.path.isfile(args.pretrained):
        p.error(f"--pretrained: expected embedded | none | an existing weights file, got {args.pretrained!r}")
    if args.pretrained == "embedded" and args.width != EMBEDDED_WIDTH:
        p.error(f"--pretrained embedded: the shipped weights are for --width {EMBEDDED_WIDTH}, got {args.width}")
    if args.data == "cityscapes" and not args.root:
        p.error("--root: the cityscapes folder is needed with --data cityscapes")
    if args.data == "synthetic" and args.batch_size > args.images:
        p.error(f"--batch-size: expected at most --images={args.images}, got {args.batch_size}")
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the weights: a run resumes only under the same settings."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "resume", "threads", "workers")}


def datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    if args.data == "cityscapes":
        size = tuple(args.size)
        return CityscapesClips(args.root, args.train_split, size), CityscapesClips(args.root, args.val_split, size)
    size = (args.image_size, args.image_size)
    return SyntheticClips(args.images, size, seed=TRAIN_SEED), SyntheticClips(args.val_images, size, seed=VAL_SEED)


def batch(dataset: Dataset, indices: list[int]) -> dict[str, torch.Tensor]:
    return default_collate([dataset[i] for i in indices])


def epoch_batches(dataset: Dataset, order: list[int], batch_size: int, workers: int) -> DataLoader:
    """The clips in ``order``, in full batches, read by ``workers`` processes."""
    return DataLoader(dataset, batch_size, sampler=order, num_workers=workers, drop_last=True)


@torch.no_grad()
def predict(depth_net: DepthNet, frames_t: torch.Tensor) -> torch.Tensor:
    """(N, H, W) depth of uint8 frames (N, 3, H, W)."""
    return disparity_to_depth(depth_net(normalize(frames_t))[0])[:, 0]


@torch.no_grad()
def validate(depth_net: DepthNet, val: Dataset, batch_size: int) -> dict[str, float]:
    """Median-scaled abs-rel and delta < 1.25 over ``val``, and the same for each clip's median
    true depth predicted everywhere."""
    depth_net.eval()
    totals = torch.zeros(2, 3, dtype=torch.float64)
    for start in range(0, len(val), batch_size):
        clips = batch(val, list(range(start, min(start + batch_size, len(val)))))
        true = clips["depth"]
        totals[0] += torch.tensor(depth_errors(predict(depth_net, clips["frames"][:, 1]), true), dtype=torch.float64)
        totals[1] += torch.tensor(median_baseline(true), dtype=torch.float64)
    depth_net.train()
    count = float(totals[0, 2]) if totals[0, 2] > 0 else float("nan")  # no true depth: no score
    return {
        "abs_rel": float(totals[0, 0]) / count,
        "delta1": float(totals[0, 1]) / count,
        "median_abs_rel": float(totals[1, 0]) / count,
        "median_delta1": float(totals[1, 1]) / count,
    }


def starting_encoder(args: argparse.Namespace) -> SmallEncoder:
    """The depth encoder's start (``--pretrained``), frozen: what the feature distance is from."""
    holder = DepthNet(args.width)
    load_pretrained(holder, args.pretrained, "small")
    return holder.encoder.eval().requires_grad_(False)


def write_metrics(path: str, rows: list[dict[str, float]]) -> None:
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_writable(args.out)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    depth_net, pose_net = DepthNet(args.width), PoseNet(args.width)
    start = "none" if args.resume else args.pretrained  # a resumed run loads its own weights below
    load_pretrained(depth_net, start, "small")
    if start != "none":
        pose_net.start_from(depth_net.encoder)
    reference = starting_encoder(args) if args.feature_distance > 0 else None
    decoder = [p for name, p in depth_net.named_parameters() if not name.startswith("encoder.")]
    groups = (decoder, depth_net.encoder.parameters(), pose_net.parameters())
    rates = (args.lr, args.lr if args.encoder_lr is None else args.encoder_lr, args.pose_lr)
    optimizer = torch.optim.Adam([{"params": params, "lr": r} for params, r in zip(groups, rates)])
    first_epoch, rows = 0, []
    last = os.path.join(args.out, LAST)
    if args.resume:
        try:
            state = load_checkpoint(last)
        except (FileNotFoundError, CheckpointError) as e:
            print(f"error: --resume: {e}", file=sys.stderr)
            return 2
        if state["config"] != settings(args):
            print(f"error: --resume: {last} was made with other settings: {state['config']}", file=sys.stderr)
            return 2
        try:
            depth_net.load_state_dict(state["model"]["depth"])
            pose_net.load_state_dict(state["model"]["pose"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:  # networks of another design (an older run)
            print(f"error: --resume: {last} holds networks this version cannot load ({e})", file=sys.stderr)
            return 2
        first_epoch, rows = state["epoch"], state["metrics"]

    t0 = time.perf_counter()
    train, val = datasets(args)
    steps = len(train) // args.batch_size  # the last partial batch is dropped
    if steps < 1:
        print(f"error: --batch-size {args.batch_size} is larger than the {len(train)} training clips", file=sys.stderr)
        return 2
    for epoch in range(first_epoch, args.epochs):
        generator = torch.Generator().manual_seed(args.seed * 100003 + epoch)
        order = torch.randperm(len(train), generator=generator).tolist()
        flips = torch.rand(steps, generator=generator) < 0.5
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate * (0.1 if epoch >= round(LR_DROP * args.epochs) else 1.0)
        frozen = epoch < args.frozen_epochs  # no gradient and no statistics for the encoder
        depth_net.encoder.requires_grad_(not frozen).train(not frozen)
        distance_weight = 0.0 if frozen else args.feature_distance  # a frozen encoder is its start: distance 0
        bar = ProgressBar(steps, desc=f"depth {epoch + 1}/{args.epochs}")
        totals = torch.zeros(3)
        for step, clips in enumerate(epoch_batches(train, order, args.batch_size, args.workers)):
            frames, intrinsics = clips["frames"], clips["intrinsics"]
            if flips[step]:  # the mirrored clip of a mirrored camera
                frames = frames.flip(-1)
                intrinsics = intrinsics.clone()
                intrinsics[:, 0, 2] = frames.shape[-1] - intrinsics[:, 0, 2]
            loss, parts = depth_loss(depth_net, pose_net, frames, intrinsics, args.smoothness, args.ssim_weight,
                                     args.blur, reference, distance_weight)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += torch.stack([parts["photometric"], parts["smoothness"], parts["feature_distance"]])
            bar.set_metrics(photometric=float(parts["photometric"]))
            bar.update(1, images=frames.shape[0])
        bar.close()
        scores = validate(depth_net, val, 4 * args.batch_size)
        rows.append({"epoch": epoch + 1, "photometric": float(totals[0]) / steps,
                     "smoothness": float(totals[1]) / steps, "feature_distance": float(totals[2]) / steps, **scores,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        print(
            f"epoch {epoch + 1}: abs-rel {scores['abs_rel']:.4f}, delta<1.25 {scores['delta1']:.4f} "
            f"(each clip's median depth everywhere: {scores['median_abs_rel']:.4f}, {scores['median_delta1']:.4f})",
            flush=True,
        )
        write_metrics(os.path.join(args.out, "metrics.csv"), rows)
        shown = batch(val, list(range(min(FIGURE_CLIPS, len(val)))))
        depth_net.eval()
        save_depth_figure(os.path.join(args.out, "depth.png"), shown["frames"],
                          predict(depth_net, shown["frames"][:, 1]), shown["depth"])  # fmt: skip
        depth_net.train()
        save_atomic({"config": settings(args), "epoch": epoch + 1, "metrics": rows, "optimizer": optimizer.state_dict(),
                     "model": {"depth": depth_net.state_dict(), "pose": pose_net.state_dict()}},
                    last, keep_previous=True)  # fmt: skip

    weights = {
        "encoder": depth_net.encoder.state_dict(),
        "depth": depth_net.state_dict(),
        "pose": pose_net.state_dict(),
    }
    with atomic_open(os.path.join(args.out, WEIGHTS), "wb") as f:
        torch.save(weights, f)
    print(f"wrote {os.path.join(args.out, WEIGHTS)} ({time.perf_counter() - t0:.0f} s)")
    return 0
