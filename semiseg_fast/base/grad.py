"""The inverse that scales gradients and losses by a denominator that may be 0."""

from __future__ import annotations

import torch


def inverse(d: torch.Tensor) -> torch.Tensor:
    """1 / d, and 0 where d is 0 (a loss over nothing is 0, its gradient 0, never NaN)."""
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
