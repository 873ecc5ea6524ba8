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


def register_loss_autograd(op, num_inputs: int) -> None:
    """Autograd of a fused loss op that returns (loss, mask ratio, d loss / d input 0 or an empty
    tensor, scale still owed by that gradient): backward scales the saved gradient, and only the
    first input (the student's logits) gets one."""

    def setup_context(ctx, inputs, output):
        _, ratio, grad, post_scale = output
        ctx.mark_non_differentiable(ratio, grad, post_scale)
        ctx.set_materialize_grads(False)  # else backward gets a logits-sized zero tensor for `grad`
        ctx.save_for_backward(grad, post_scale)

    def backward(ctx, g_loss, *_):
        grad, post_scale = ctx.saved_tensors
        grad_student = None
        if ctx.needs_input_grad[0] and g_loss is not None:
            grad_student = scaled_grad(grad, g_loss * post_scale)
        return (grad_student,) + (None,) * (num_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)
