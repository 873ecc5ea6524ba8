"""Label helpers shared by every floor."""

from __future__ import annotations

import torch


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 labels while every class fits next to the ignore value 255, else int64."""
    return torch.uint8 if num_classes <= 255 else torch.int64


def not_ignored(t: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``t != ignore_index``, exact for every integer dtype: PyTorch would cast -1 to 255 for uint8."""
    if not t.dtype.is_floating_point and t.dtype != torch.bool:
        info = torch.iinfo(t.dtype)
        if not info.min <= ignore_index <= info.max:
            return torch.ones_like(t, dtype=torch.bool)
    return t != ignore_index
