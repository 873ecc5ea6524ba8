"""``python -m semiseg_fast.select_labels --depth RUN --count K [--rounds 25 50 100] --out DIR``

Chooses which images of the embedded training pool to label, as Hoyer et al. (2021) choose them
with a self-supervised depth network (a ``python -m semiseg_fast.depth`` run):

- ``diversity+difficulty`` (the default): iterative farthest-point selection on the depth
  network's decoder features (1/4 resolution, average-pooled to 4x4, standardised over the pool),
  starting from an image the seed draws. Up to the first ``--rounds`` count the distances alone
  decide. At each round count below ``--count``, a depth student (the depth network's architecture,
  from scratch) is trained on the images chosen so far to regress the depth network's disparity
  (BerHu loss), and each candidate's distance is raised by its difficulty: the student's mean
  |log(1 + d_student) - log(1 + d_teacher)| over the image, relative to the pool's mean, times the
  pool's mean nearest-neighbour distance, times ``--difficulty-weight``.
- ``diversity``: farthest points on the features alone.
- ``random``: a random subset, another for each seed.
- ``entropy``: the images a segmentation checkpoint (``--checkpoint``) is least sure of, by mean
  per-pixel entropy of its prediction.

Writes ``DIR/labeled.txt`` and ``DIR/unlabeled.txt`` (one image id per line, ``scene000123``) and
``DIR/selection.json`` (the settings, the order of choice, each round's difficulty), each
atomically. ``python -m semiseg_fast.train data.root=DIR`` trains on the split. The command is
deterministic for a seed at a given thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

STRATEGIES = ("random", "entropy", "diversity", "diversity+difficulty")
FEATURE_GRID = 4  # the decoder features are average-pooled to 4x4 (Hoyer et al.: 4x8 on Cityscapes' 1:2 frames)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m semiseg_fast.select_labels", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", required=True, help="the folder for labeled.txt, unlabeled.txt and selection.json")
    p.add_argument("--count", type=int, required=True, help="how many images to label")
    p.add_argument("--strategy", choices=STRATEGIES, default="diversity+difficulty")
    p.add_argument("--depth", help="a python -m semiseg_fast.depth run folder (the diversity strategies)")
    p.add_argument("--checkpoint", help="a segmentation checkpoint (the entropy strategy)")
    p.add_argument(
        "--rounds", type=int, nargs="+", default=[25, 50, 100], help="counts at which the depth student is retrained"
    )
    p.add_argument("--difficulty-weight", type=float, default=1.0, help="the difficulty's weight beside the distance")
    p.add_argument("--student-epochs", type=int, default=40, help="passes of the depth student over the chosen images")
    p.add_argument("--student-width", type=int, default=16, help="the depth student's width")
    p.add_argument("--seed", type=int, default=0, help="the first image, the random subset and the students")
    p.add_argument("--images", type=int, default=800, help="the pool: data.synthetic_train of the runs to train")
    p.add_argument("--image-size", type=int, default=64, help="the pool's image side: data.image_size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass and student step")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    positive = {"--images": args.images, "--batch-size": args.batch_size, "--threads": args.threads}
    positive.update({"--student-epochs": args.student_epochs, "--student-width": args.student_width})
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value}")
    if args.image_size < 8:
        raise ValueError(f"--image-size: expected at least 8, got {args.image_size}")
    if not 1 <= args.count < args.images:
        raise ValueError(
            f"--count: expected 1 to {args.images - 1} (the pool has {args.images} images and at least one "
            f"stays unlabeled), got {args.count}"
        )
    if any(r < 1 for r in args.rounds) or sorted(set(args.rounds)) != args.rounds:
        raise ValueError(f"--rounds: expected increasing positive counts, got {args.rounds}")
    if not (math.isfinite(args.difficulty_weight) and args.difficulty_weight >= 0):
        raise ValueError(f"--difficulty-weight: expected a number >= 0, got {args.difficulty_weight}")
    if args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.strategy.startswith("diversity") and not args.depth:
        raise ValueError(f"--depth: the {args.strategy} strategy needs a depth run's folder")
    if args.strategy == "entropy" and not args.checkpoint:
        raise ValueError("--checkpoint: the entropy strategy needs a segmentation checkpoint")


def pool_images(args: argparse.Namespace) -> torch.Tensor:
    """The embedded training pool, normalised (N, 3, H, W): the images ``python -m semiseg_fast.train`` draws from."""
    from .data import SyntheticScenes, normalize
    from .train.data import SYNTHETIC_TRAIN_SEED

    pool = SyntheticScenes(args.images, (args.image_size, args.image_size), seed=SYNTHETIC_TRAIN_SEED)
    return normalize(torch.stack([pool[i][0] for i in range(len(pool))]))


@torch.no_grad()
def depth_features(net: torch.nn.Module, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the decoder's 1/4-resolution features pooled to 4x4 and standardised over the pool (N, D),
    the full-resolution disparity (N, 1, H, W))."""
    features, disparity = [], []
    for x in images.split(batch):
        levels = net.features(x)
        features.append(F.adaptive_avg_pool2d(levels[2], FEATURE_GRID).flatten(1))
        disparity.append(torch.sigmoid(net.heads[0](levels[0])))  # net(x)[0] without a second pass
    f = torch.cat(features).double()
    f = (f - f.mean(0)) / f.std(0).clamp_min(1e-6)
    return f, torch.cat(disparity)


def farthest_points(
    distance: torch.Tensor, chosen: list[int], count: int, bonus: torch.Tensor | None = None
) -> list[int]:
    """``chosen`` extended to ``count`` images: each time the candidate whose distance to its nearest
    chosen image, plus its ``bonus``, is largest (ties: the lowest index)."""
    chosen = list(chosen)
    nearest = distance[chosen].amin(0)
    while len(chosen) < count:
        score = nearest + (bonus if bonus is not None else 0)
        score[chosen] = -math.inf
        j = int(score.argmax())
        chosen.append(j)
        nearest = torch.minimum(nearest, distance[j])
    return chosen


def berhu(error: torch.Tensor) -> torch.Tensor:
    """Reverse Huber, with the threshold 0.2 max |error| of the batch (Laina et al.; Hoyer et al.'s student)."""
    a = error.abs()
    c = (0.2 * a.max()).clamp_min(1e-6).detach()
    return torch.where(a <= c, a, (a * a + c * c) / (2 * c)).mean()


def train_student(images: torch.Tensor, target: torch.Tensor, chosen: list[int], args, seed: int) -> torch.nn.Module:
    """A depth network from scratch regressing ``target`` disparity on the ``chosen`` images (Adam 1e-3,
    ``--student-epochs`` passes, random horizontal flips), in eval mode."""
    from .depth import DepthNet

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    student = DepthNet(args.student_width)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    idx = torch.tensor(chosen)
    steps = math.ceil(len(chosen) * args.student_epochs / args.batch_size)
    for _ in range(steps):
        pick = idx[torch.randint(len(chosen), (min(args.batch_size, len(chosen)),), generator=g)]
        x, y = images[pick], target[pick]
        flip = torch.rand(len(pick), generator=g) < 0.5
        x, y = (
            torch.where(flip[:, None, None, None], x.flip(-1), x),
            torch.where(flip[:, None, None, None], y.flip(-1), y),
        )
        loss = berhu(student(x)[0] - y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return student.eval()


@torch.no_grad()
def difficulty(student: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, batch: int) -> torch.Tensor:
    """(N,) mean |log(1 + student disparity) - log(1 + teacher disparity)| of each image."""
    out = [
        (student(x)[0].log1p() - y.log1p()).abs().mean(dim=(1, 2, 3))
        for x, y in zip(images.split(batch), target.split(batch))
    ]
    return torch.cat(out).double()


@torch.no_grad()
def entropy_scores(checkpoint: str, images: torch.Tensor, batch: int) -> torch.Tensor:
    """(N,) mean per-pixel entropy of a segmentation checkpoint's prediction (its evaluated weights)."""
    from .models import model_outputs
    from .ops import pixel_stats
    from .train.checkpoint import load_checkpoint
    from .train.config import config_from_checkpoint
    from .train.run_model import evaluated_model

    state = load_checkpoint(checkpoint)
    model = evaluated_model(state, config_from_checkpoint(state), torch.device("cpu"))
    out = []
    for x in images.split(batch):
        logits = model_outputs(model(x))[0].float()
        out.append(pixel_stats(logits, size=tuple(x.shape[-2:]), align_corners=True).entropy.mean(dim=(1, 2)))
    return torch.cat(out).double()


def select(args: argparse.Namespace, images: torch.Tensor) -> dict[str, Any]:
    """The chosen pool indices in their order of choice, and what each round measured."""
    g = torch.Generator().manual_seed(args.seed)
    if args.strategy == "random":
        return {"chosen": torch.randperm(len(images), generator=g)[: args.count].tolist()}
    if args.strategy == "entropy":
        scores = entropy_scores(args.checkpoint, images, args.batch_size)
        order = sorted(range(len(images)), key=lambda i: (-float(scores[i]), i))
        return {"chosen": order[: args.count]}

    from .depth.networks import frozen_depth_network

    teacher = frozen_depth_network(args.depth, "--depth")
    features, target = depth_features(teacher, images, args.batch_size)
    distance = torch.cdist(features, features)
    chosen = [int(torch.randint(len(images), (1,), generator=g))]
    rounds = [r for r in args.rounds if r < args.count] if args.strategy == "diversity+difficulty" else []
    first = rounds[0] if rounds else args.count
    chosen = farthest_points(distance, chosen, first)
    self_distance = torch.eye(len(images), dtype=torch.bool)
    spacing = float(distance.masked_fill(self_distance, math.inf).amin(1).mean())  # mean nearest-neighbour distance
    measured = []
    for k, count in enumerate(rounds):
        student = train_student(images, target, chosen, args, seed=args.seed * 1000 + k)
        hardness = difficulty(student, images, target, args.batch_size)
        bonus = args.difficulty_weight * spacing * hardness / hardness.mean()
        measured.append({"labeled": count, "mean_difficulty": float(hardness.mean())})
        following = rounds[k + 1] if k + 1 < len(rounds) else args.count
        chosen = farthest_points(distance, chosen, following, bonus)
    return {"chosen": chosen, "difficulty": measured, "feature_spacing": spacing}


def write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from .data.scene_splits import scene_id, write_scene_split
    from .utils.atomic import atomic_open

    os.makedirs(args.out, exist_ok=True)
    chosen = result["chosen"]
    rest = sorted(set(range(args.images)) - set(chosen))
    write_scene_split(os.path.join(args.out, "labeled.txt"), sorted(chosen))
    write_scene_split(os.path.join(args.out, "unlabeled.txt"), rest)
    record = {k: v for k, v in vars(args).items() if k not in ("out", "threads")}
    record.update(order=[scene_id(i) for i in chosen], **{k: v for k, v in result.items() if k != "chosen"})
    with atomic_open(os.path.join(args.out, "selection.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        torch.set_num_threads(args.threads)
        images = pool_images(args)
        result = select(args, images)
        write(args, result)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.strategy}: {args.count} of {args.images} images to label -> {args.out}/labeled.txt, unlabeled.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
