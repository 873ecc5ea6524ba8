"""newest_negatives: which keys U2PL's memory bank takes in a step. For each class, the newest
(last in row-major order) pixels that are negatives for it, found without (pixels, classes) masks
or a top-k over the pixels: a backwards scan per class on the CPU, a count-then-write pair of
Triton kernels on CUDA."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve


@torch.library.custom_op("semiseg_fast::newest_negatives", mutates_args=())
def _newest_negatives_op(
    prob: torch.Tensor,
    label: torch.Tensor,
    unreliable: torch.Tensor,
    labeled: torch.Tensor,
    low_rank: int,
    high_rank: int,
    threshold: float,
    limit: int,
    quirks: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = (prob, label, unreliable, labeled, low_rank, high_rank, threshold, limit, quirks)
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_newest_negatives(*args))
    from ..triton.newest_negatives import newest_negatives as triton_newest_negatives

    return triton_newest_negatives(*args)


@_newest_negatives_op.register_fake
def _(prob, label, unreliable, labeled, low_rank, high_rank, threshold, limit, quirks, backend):
    c = prob.shape[1]
    return prob.new_empty((c, limit), dtype=torch.int64), prob.new_empty((c,), dtype=torch.int64)


def newest_negatives(
    prob: torch.Tensor,
    label: torch.Tensor,
    unreliable: torch.Tensor,
    labeled: torch.Tensor,
    low_rank: int,
    high_rank: int,
    threshold: float,
    limit: int,
    quirks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory-bank push of U2PL's contrastive term: ``(index (C, limit), counts (C,))``, where
    ``index[k, :counts[k]]`` are the pixels (flat, row-major over (B, h, w)) that are negatives for
    class k, the newest ``limit`` of them, oldest first (the rest of the row is filler).

    Negative for class k, with rank_k the position of k among the pixel's probabilities (largest
    first, ties by class index): the pixel is ``unreliable``, ``prob[k] < threshold``, and on a
    ``labeled`` image rank_k < ``low_rank`` and k is not its label, on an unlabeled one
    ``low_rank <= rank_k < high_rank``. ``quirks`` (the official code): only k equal to the label.

    Args:
        prob: (B, C, h, w) float32 teacher probabilities.
        label: (B * h * w,) int64 labels (a value outside [0, C): no class).
        unreliable: (B * h * w,) bool, already false at invalid pixels.
        labeled: (B,) bool, which images are labeled.
    """
    prob = _checks.tensor(prob, "prob")
    if prob.dim() != 4 or prob.dtype != torch.float32:
        raise ValueError(f"prob: expected a (B, C, h, w) float32 tensor, got {tuple(prob.shape)} {prob.dtype}")
    b, c, h, w = prob.shape
    for name, t, shape, dtype in (
        ("label", label, (b * h * w,), torch.int64),
        ("unreliable", unreliable, (b * h * w,), torch.bool),
        ("labeled", labeled, (b,), torch.bool),
    ):
        _checks.same_device(prob, _checks.shaped(t, name, shape, dtype), name, "prob")
    if limit < 1:
        raise ValueError(f"limit: expected >= 1, got {limit}")
    args = (prob.detach(), label, unreliable, labeled, int(low_rank), int(high_rank), float(threshold), int(limit))
    impl = resolve(prob.device)
    if impl == "reference":
        return reference.newest_negatives(*args, bool(quirks))
    return _newest_negatives_op(*args, bool(quirks), impl)
