"""Monocular depth scored as monocular methods are: each prediction scaled by the ratio of the
medians of true and predicted depth over the pixels with a true depth, then abs-rel
(mean |pred - true| / true) and delta < 1.25 (share of pixels with max(pred/true, true/pred) < 1.25)."""

from __future__ import annotations

import torch


def median_scaled(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """One image's ``pred`` times median(true) / median(pred) over the pixels with a true depth
    (true > 0); unscaled where it has none."""
    valid = true > 0
    if not valid.any():
        return pred
    return pred * (true[valid].median() / pred[valid].median().clamp_min(1e-12))


def depth_errors(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float, int]:
    """(sum of abs-rel, count of delta < 1.25, pixels) of median-scaled ``pred`` against ``true``
    (both (N, H, W); true <= 0 means unknown). Sums, so that batches add up."""
    abs_rel, within, count = 0.0, 0.0, 0
    for p, t in zip(pred, true):
        valid = t > 0
        if not valid.any():
            continue
        p, t = median_scaled(p.double(), t.double())[valid], t[valid].double()
        abs_rel += float(((p - t).abs() / t).sum())
        within += float((torch.maximum(p / t, t / p) < 1.25).sum())
        count += int(valid.sum())
    return abs_rel, within, count


def median_baseline(true: torch.Tensor) -> tuple[float, float, int]:
    """:func:`depth_errors` of predicting each image's median true depth everywhere."""
    return depth_errors(torch.ones_like(true), true)
