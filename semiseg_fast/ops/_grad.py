"""Backward of the fused losses: the forward already wrote d loss / d logits into a buffer of
its own, so backward only scales that buffer by the incoming gradient.

The buffer is never modified, so backward can run any number of times (retain_graph,
gradcheck, jacobians). When the scale is exactly 1 (the usual ``loss.backward()``) the buffer
itself is the gradient: no pass, no allocation. That test reads the scalar, which is free for
CPU tensors; on CUDA it would be a host sync, so there the product is always taken.
"""
from __future__ import annotations

import torch


def scaled_grad(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """grad * scale, where scale is a scalar or a per-pixel (N, H, W) tensor."""
    if scale.dim() != 0:
        return grad * scale.unsqueeze(1).to(grad.dtype)
    # Only a plain CPU tensor is read: fake/functional tensors under torch.compile are subclasses.
    if type(scale) is torch.Tensor and scale.device.type == "cpu" and not torch.compiler.is_compiling():
        if float(scale) == 1.0:
            return grad
    return grad * scale.to(grad.dtype)
