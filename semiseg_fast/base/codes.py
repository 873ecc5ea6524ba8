"""The reduction and normalizer codes the ops pass to their kernels, defined once: the Triton
kernels use these, and the C++ kernels the same values from csrc/common/codes.h (a test checks
that the two agree). Also the mean's denominator that the Python side computes (Triton's
forward, the weight's gradient)."""

from __future__ import annotations

from enum import IntEnum

import torch

from .labels import not_ignored


class Reduction(IntEnum):
    NONE = 0
    MEAN = 1
    SUM = 2


class Normalizer(IntEnum):
    """The denominator of a mean: over non-ignored pixels, their summed weight, all N*H*W pixels,
    a number, the confident pixels (masked means), or a 0-dim tensor (resolved before a kernel
    sees it: never passed to C++)."""

    VALID = 0
    WEIGHTED = 1
    TOTAL = 2
    VALUE = 3
    CONFIDENT = 4
    TENSOR = 5


def mean_denominator(
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    mode: int,
    value: float,
    tensor: torch.Tensor | None,
    numel: int,
    device: torch.device,
) -> torch.Tensor:
    """The mean's denominator as an fp32 device tensor (no host sync), for every mode but CONFIDENT."""
    if mode == Normalizer.TENSOR:
        return tensor.to(torch.float32)
    if mode == Normalizer.TOTAL:
        return torch.tensor(float(numel), device=device)
    if mode == Normalizer.VALUE:
        return torch.tensor(float(value), device=device)
    valid = not_ignored(target, ignore_index)
    if mode == Normalizer.WEIGHTED and weight is not None:
        return (weight.float() * valid).sum()
    return valid.sum().float()
