"""Scalar random draws from an explicit torch.Generator, so that an augmentation or a mask is a
function of its seed (reproducible, resumable, the same in any worker)."""

from __future__ import annotations

import torch


def uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def randint(g: torch.Generator, high: int) -> int:
    """An integer in [0, high)."""
    return int(torch.randint(high, (), generator=g))
