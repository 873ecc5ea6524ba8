"""pseudo_label_cross_entropy: masked, weighted per-pixel cross-entropy with its gradient
computed in the same pass (the only logits-sized tensor kept for backward)."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base import Normalizer, Reduction, inverse, mean_denominator, not_ignored, saved_grad_buffer
from ..base.resample import interpolate
from ._grad import first_order_only, refuse_function_transforms, scaled_grad


@torch.library.custom_op("semiseg_fast::pseudo_label_cross_entropy", mutates_args=())
def _cross_entropy_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: int,
    norm_mode: int,
    norm_value: float,
    norm_tensor: torch.Tensor | None,
    need_grad: bool,
    need_ce: bool,
    size: list[int] | None,
    align_corners: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, d loss / d logits or an empty tensor, per-pixel ce or an empty tensor)."""
    if backend == "cpp":
        if norm_mode == Normalizer.TENSOR:  # a CPU scalar: reading it is free (0 still gives a loss of 0)
            norm_mode, norm_value = Normalizer.VALUE, float(norm_tensor)
        return tuple(
            torch.ops.semiseg_fast._cpp_cross_entropy(
                logits,
                target,
                weight,
                ignore_index,
                reduction,
                norm_mode,
                norm_value,
                need_grad,
                need_ce,
                size,
                align_corners,
            )
        )
    if logits.device.type == "cpu":
        _checks.target_values(target, logits.shape[1], ignore_index)
    from ..triton.cross_entropy import cross_entropy as triton_cross_entropy

    return triton_cross_entropy(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        norm_mode,
        norm_value,
        norm_tensor,
        need_grad,
        need_ce,
        size and tuple(size),
        align_corners,
    )


@_cross_entropy_op.register_fake
def _(
    logits,
    target,
    weight,
    ignore_index,
    reduction,
    norm_mode,
    norm_value,
    norm_tensor,
    need_grad,
    need_ce,
    size,
    align_corners,
    backend,
):
    n, _, h, w = logits.shape
    if size is not None:
        h, w = size
    f32 = dict(dtype=torch.float32)
    loss = logits.new_empty((n, h, w) if reduction == Reduction.NONE else (), **f32)
    grad = saved_grad_buffer(logits, need_grad)
    ce = logits.new_empty((n, h, w), **f32) if need_ce else logits.new_empty((0,), **f32)
    return loss, grad, ce


def _setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction, norm_mode, norm_value, norm_tensor, need_grad, need_ce = inputs[
        :10
    ]
    loss, grad, ce = output
    ctx.mark_non_differentiable(grad, ce)
    ctx.set_materialize_grads(False)  # else backward gets a logits-sized zero tensor for `grad`
    ctx.reduction, ctx.norm_mode, ctx.norm_value, ctx.ignore_index = reduction, norm_mode, norm_value, ignore_index
    ctx.logits_dtype = logits.dtype
    # The weight's gradient needs the per-pixel ce (and the loss), a tensor normalizer's the loss;
    # otherwise only the logits' gradient is kept (and the loss may be modified in place).
    norm_grad = reduction == Reduction.MEAN and norm_tensor is not None and norm_tensor.requires_grad
    ctx.save_for_backward(
        grad,
        loss if need_ce or norm_grad else None,
        norm_tensor if need_ce or norm_grad else None,
        *((ce, weight, target) if need_ce else (None,) * 3),
    )


def _weight_grad(ctx, g, ce, weight, target, loss, norm_tensor):
    valid = not_ignored(target, ctx.ignore_index)
    if ctx.reduction == Reduction.NONE:
        return (g * ce).to(weight.dtype)
    if ctx.reduction == Reduction.SUM:
        return (g * ce).to(weight.dtype)
    denom = mean_denominator(
        target, weight, ctx.ignore_index, ctx.norm_mode, ctx.norm_value, norm_tensor, ce.numel(), ce.device
    )
    inv = inverse(denom)
    d = ce - loss if ctx.norm_mode == Normalizer.WEIGHTED else ce  # d (sum w ce / sum w) / d w = (ce - L) / sum w
    return (g * torch.where(valid, d, torch.zeros_like(d)) * inv).to(weight.dtype)


def _backward(ctx, g_loss, _g_grad, _g_ce):
    grad, loss, norm_tensor, ce, weight, target = ctx.saved_tensors
    grad_logits = grad_weight = grad_norm = None
    if g_loss is not None and ctx.needs_input_grad[0]:
        grad_logits = scaled_grad(grad, g_loss, ctx.logits_dtype)
    if g_loss is not None and ctx.needs_input_grad[2]:
        grad_weight = _weight_grad(ctx, g_loss, ce, weight, target, loss, norm_tensor)
    if g_loss is not None and ctx.needs_input_grad[7] and ctx.reduction == Reduction.MEAN:
        # loss = sum / d, so d loss / d d = -loss / d (0 for a zero denominator, where the loss is 0)
        grad_norm = (-g_loss * loss * inverse(norm_tensor.float())).to(norm_tensor.dtype)
    grad_logits, grad_weight, grad_norm = map(first_order_only, (grad_logits, grad_weight, grad_norm))
    return grad_logits, None, grad_weight, None, None, None, None, grad_norm, None, None, None, None, None


_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


NORMALIZERS = ("valid", "weighted", "total")


def check_options(
    ignore_index: object, reduction: object, normalizer: object, like: torch.Tensor | None = None
) -> tuple[int, int, int, float]:
    """(ignore_index, reduction code, normalizer code, normalizer value): the one check of these
    arguments, for the op and for the module at construction."""
    ignore_index = _checks.integer(ignore_index, "ignore_index")
    norm_mode, norm_value = _checks.normalizer(normalizer, NORMALIZERS, like=like, tensors=True)
    return ignore_index, _checks.reduction(reduction), norm_mode, norm_value


def pseudo_label_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
    normalizer: str | float = "valid",
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """Cross-entropy of (N, C, H, W) logits against integer (pseudo-)labels, in one pass.

    Args:
        logits: (N, C, H, W), float16/bfloat16/float32/float64, any strides. Computed in fp32.
        target: (N, H, W) integer class indices (uint8 preferred); ``ignore_index`` marks
            pixels that contribute nothing. Other values outside [0, C) raise IndexError (on
            CUDA, where checking would need a host sync, they give a NaN loss instead).
        weight: optional (N, H, W) per-pixel weight or bool mask; the pixel loss is
            ``weight * ce``. Differentiable when it requires grad.
        ignore_index: the target value to ignore (255, as in every segmentation codebase).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-pixel (N, H, W) loss, 0 where ignored).
        normalizer: the denominator of ``"mean"``: ``"valid"`` = non-ignored pixels,
            ``"weighted"`` = sum of their weights, ``"total"`` = all N*H*W pixels, a positive
            number, or a 0-dim tensor on the logits' device (a denominator computed on the
            device, read by the kernel: no host sync). A zero denominator gives a loss of 0.
        size, align_corners: the loss of ``F.interpolate(logits, size, mode="bilinear",
            align_corners=align_corners)``, computed from ``logits`` without the upsampled tensor:
            target and weight are (N, *size), the gradient comes back at the logits' own size.

    Returns:
        The fp32 loss. Its gradient is computed in the forward pass and kept (one tensor the
        size of ``logits``); nothing else logits-sized is saved.
    """
    logits = _checks.logits(logits)
    size, align_corners = _checks.output_size(size, logits, align_corners)
    target = _checks.target(target, logits, size=size)
    weight = _checks.weight(weight, logits, size=size)
    ignore_index, red, norm_mode, norm_value = check_options(ignore_index, reduction, normalizer, like=logits)
    norm_tensor = normalizer if norm_mode == Normalizer.TENSOR else None
    impl = resolve(logits.device)
    refuse_function_transforms(logits, impl)
    if impl == "reference":
        if logits.device.type == "cpu" and not torch.compiler.is_compiling():
            _checks.target_values(target, logits.shape[1], ignore_index)
        return reference.pseudo_label_cross_entropy(
            interpolate(logits, size, align_corners), target, weight, ignore_index, reduction, normalizer
        )
    grad_on = torch.is_grad_enabled()
    need_grad = grad_on and logits.requires_grad
    need_ce = grad_on and weight is not None and weight.requires_grad
    loss, _, _ = _cross_entropy_op(
        logits,
        target,
        weight,
        ignore_index,
        red,
        norm_mode,
        norm_value,
        norm_tensor,
        need_grad,
        need_ce,
        size and list(size),
        align_corners,
        impl,
    )
    return loss
