"""Bilinear resampling as ``F.interpolate(x, size, mode="bilinear", align_corners=...)`` computes
it, one axis at a time: the two source indices and weights of every output index.

The fused ops that take ``size=`` read the decoder's logits through these tables instead of an
upsampled copy. The arithmetic is torch's formula in float32 (scale, then ``scale * (i + 0.5) - 0.5``
clamped at 0, floor, the weight of the upper neighbour, 1 minus it). Torch's own CPU kernels round
the source coordinate in another order, so their weights may differ from these by one rounding of
it (about 1e-7 times the source size).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class AxisWeights(NamedTuple):
    """Output index j reads source indices i0[j] (weight l0[j]) and i1[j] (weight l1[j])."""

    i0: torch.Tensor  # int32
    i1: torch.Tensor  # int32
    l0: torch.Tensor  # float32
    l1: torch.Tensor  # float32


def axis_weights(in_size: int, out_size: int, align_corners: bool, device=None) -> AxisWeights:
    """The bilinear taps of one axis resampled from ``in_size`` to ``out_size`` points."""
    f32 = dict(dtype=torch.float32, device=device)
    j = torch.arange(out_size, device=device)
    if in_size == out_size:  # torch copies: each output reads its own index with weight 1
        i = j.to(torch.int32)
        return AxisWeights(i, i, torch.ones(out_size, **f32), torch.zeros(out_size, **f32))
    if align_corners:
        scale = (
            torch.tensor(float(in_size - 1), **f32) / torch.tensor(float(out_size - 1), **f32)
            if out_size > 1
            else torch.zeros((), **f32)
        )
        src = scale * j.to(torch.float32)
    else:
        scale = torch.tensor(float(in_size), **f32) / torch.tensor(float(out_size), **f32)
        src = (scale * (j.to(torch.float32) + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.floor().clamp_max(in_size - 1).to(torch.int32)
    l1 = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    i1 = i0 + (i0 < in_size - 1).to(torch.int32)
    return AxisWeights(i0, i1, 1.0 - l1, l1)


def interpolate(x: torch.Tensor, size: tuple[int, int] | None, align_corners: bool) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=align_corners)``; ``x`` when size is None."""
    if size is None:
        return x
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
