"""The inverse that scales gradients and losses by a denominator that may be 0, and the buffer a
fused loss writes its gradient into."""

from __future__ import annotations

import torch


def inverse(d: torch.Tensor) -> torch.Tensor:
    """1 / d, and 0 where d is 0 (a loss over nothing is 0, its gradient 0, never NaN)."""
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def saved_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gradient a fused loss writes in forward for logits of ``dtype``: fp32 for
    fp16/bf16, so that backward multiplies by the incoming gradient and rounds once."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def saved_grad_buffer(logits: torch.Tensor, need_grad: bool) -> torch.Tensor:
    """An uninitialised gradient buffer laid out like ``logits`` (empty when no gradient is wanted)."""
    dtype = saved_grad_dtype(logits.dtype)
    return torch.empty_like(logits, dtype=dtype) if need_grad else logits.new_empty((0,), dtype=dtype)
