"""Backward of the fused losses: the forward already wrote d loss / d logits into a buffer of
its own, so backward only scales that buffer by the incoming gradient.

The buffer is fp32 for fp16/bf16 logits (``base.saved_grad_dtype``): backward multiplies it by the
incoming gradient and rounds once to the logits' dtype, as a loss computed in fp32 on upcast
logits would. (Stored in the logits' dtype, the gradient would be rounded twice, one unit in the
last place off whenever the incoming gradient is not 1: a loss weight, a tensor normalizer.)

The buffer is never modified, so backward can run any number of times (retain_graph,
gradcheck, jacobians). When the scale is exactly 1 (the usual ``loss.backward()``) an fp32 or
fp64 buffer is itself the gradient: no pass, no allocation. That test reads the scalar, which is
free for CPU tensors; on CUDA it would be a host sync, so there the product is always taken.

The saved gradient is a constant to autograd, so a second derivative through it would be
silently wrong: a backward under ``create_graph=True`` raises (:func:`first_order_only`).
"""

from __future__ import annotations

import torch

__all__ = [
    "SECOND_ORDER_MESSAGE",
    "first_order_only",
    "refuse_function_transforms",
    "register_loss_autograd",
    "scaled_grad",
]

SECOND_ORDER_MESSAGE = (
    "semiseg_fast: the fused losses are differentiable once: their backward refuses create_graph=True "
    "(which torch.func's transforms use too), since the gradient of their gradient would be wrong. Run them "
    "under semiseg_fast.backend('reference') for higher-order gradients."
)


def first_order_only(grad: torch.Tensor | None) -> torch.Tensor | None:
    """``grad`` itself; a backward building a graph (create_graph=True, torch.func) is refused at
    once. A gradient handed back for later differentiation could not be correct: the path from it to
    the logits does not exist (the kernel computed it), so a second derivative over that path, asked
    for with allow_unused or materialize_grads, would come back as zeros instead of an error."""
    if grad is not None and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(SECOND_ORDER_MESSAGE)
    return grad


def refuse_function_transforms(x: torch.Tensor, impl: str) -> None:
    """The fused kernels do not run under torch.func (grad, vmap, jacrev, ...): refused with
    :data:`SECOND_ORDER_MESSAGE` rather than torch's own error about autograd.Function."""
    if impl == "reference" or torch.compiler.is_compiling():  # dynamo does not trace the probe
        return
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        raise RuntimeError(SECOND_ORDER_MESSAGE)


def scaled_grad(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad * scale as ``dtype`` (the logits'), rounded once; scale is an fp32 scalar or a per-pixel
    (N, H, W) tensor.

    The product is taken in fp32 (fp64 for fp64 gradients): a loss scale such as GradScaler's
    2**16 need not fit in fp16 itself.
    """
    if scale.dim() != 0:
        scale = scale.unsqueeze(1)
    # Only a plain CPU tensor is read: fake/functional tensors under torch.compile are subclasses.
    elif type(scale) is torch.Tensor and scale.device.type == "cpu" and not torch.compiler.is_compiling():
        if float(scale) == 1.0 and grad.dtype == dtype:
            return grad
    if type(grad) is torch.Tensor and grad.device.type == "cpu" and not torch.compiler.is_compiling():
        from .._backend import cpp_available

        if cpp_available():  # one pass into a recycled buffer: no page faults on a fresh one
            return torch.ops.semiseg_fast._cpp_scaled_grad(grad, scale.to(grad.dtype), dtype)
    return torch.mul(grad, scale.to(grad.dtype), out=torch.empty_like(grad, dtype=dtype))


def register_loss_autograd(op, num_inputs: int) -> None:
    """Autograd of a fused loss op that returns (loss, mask ratio, d loss / d input 0 or an empty
    tensor, scale still owed by that gradient): backward scales the saved gradient, and only the
    first input (the student's logits) gets one."""

    def setup_context(ctx, inputs, output):
        _, ratio, grad, post_scale = output
        ctx.mark_non_differentiable(ratio, grad, post_scale)
        ctx.set_materialize_grads(False)  # else backward gets a logits-sized zero tensor for `grad`
        ctx.save_for_backward(grad, post_scale)
        ctx.student_dtype = inputs[0].dtype

    def backward(ctx, g_loss, *_):
        grad, post_scale = ctx.saved_tensors
        grad_student = None
        if ctx.needs_input_grad[0] and g_loss is not None:
            grad_student = first_order_only(scaled_grad(grad, g_loss * post_scale, ctx.student_dtype))
        return (grad_student,) + (None,) * (num_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)
