"""negative_class_mask: which classes rank in [low_rank, high_rank) per pixel (U2PL's negatives)."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve


@torch.library.custom_op("semiseg_fast::negative_class_mask", mutates_args=())
def _negative_mask_op(x: torch.Tensor, low_rank: int, high_rank: int, backend: str) -> torch.Tensor:
    if backend == "cpp":
        return torch.ops.semiseg_fast._cpp_negative_mask(x, low_rank, high_rank)
    from ..triton.negative_mask import negative_mask

    return negative_mask(x, low_rank, high_rank)


@_negative_mask_op.register_fake
def _(x, low_rank, high_rank, backend):
    return torch.empty(x.shape, dtype=torch.bool, device=x.device)


def negative_class_mask(logits_or_probs: torch.Tensor, low_rank: int = 3, high_rank: int = 20) -> torch.Tensor:
    """(N, C, H, W) bool: True where class c's rank at that pixel is in [low_rank, high_rank).

    Rank 0 is the most likely class; equal values rank by class index (a stable descending
    sort), and ranks are those of the given values (logits and probabilities agree except where
    the softmax rounds two classes to the same value). Computed by comparisons in one pass over
    the input, without sorting. ``high_rank`` beyond C is clamped, as slicing would.

    Raises ValueError when the window cannot select anything (``low_rank >= C`` or
    ``low_rank >= high_rank``): the official U2PL code silently returns a zero contrastive loss
    for 2- and 3-class datasets with its default ``low_rank=3``.
    """
    x = _checks.logits(logits_or_probs, "logits_or_probs")
    c = x.shape[1]
    low_rank = _checks.integer(low_rank, "low_rank")
    high_rank = _checks.integer(high_rank, "high_rank")
    if low_rank < 0:
        raise ValueError(f"low_rank: expected >= 0, got {low_rank}")
    if low_rank >= c:
        raise ValueError(
            f"low_rank: expected < C={c}, got {low_rank}: no class can rank there, so there would be no "
            "negatives (use a smaller low_rank for datasets with few classes)"
        )
    if low_rank >= high_rank:
        raise ValueError(f"high_rank: expected > low_rank={low_rank}, got {high_rank}: the window is empty")
    high_rank = min(high_rank, c)
    impl = resolve(x.device)
    if impl == "reference":
        return reference.negative_class_mask(x, low_rank, high_rank)
    return _negative_mask_op(x.detach(), low_rank, high_rank, impl)
