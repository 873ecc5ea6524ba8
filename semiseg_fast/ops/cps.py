"""cps_loss: cross pseudo-supervision (CPS, and RRN on top of it), each network's cross-entropy
against the other's pseudo-labels, both terms in one pass over the two logits tensors."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base import saved_grad_buffer
from ..base.resample import interpolate
from ._grad import first_order_only, refuse_function_transforms, scaled_grad
from .fixmatch import check_options


@torch.library.custom_op("semiseg_fast::cps_loss", mutates_args=())
def _cps_op(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    ignore_mask: torch.Tensor | None,
    ignore_index: int,
    threshold: float,
    norm_mode: int,
    norm_value: float,
    label_a: torch.Tensor | None,
    conf_a: torch.Tensor | None,
    label_b: torch.Tensor | None,
    conf_b: torch.Tensor | None,
    need_grad_a: bool,
    need_grad_b: bool,
    size: list[int] | None,
    align_corners: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask ratio, gradient of a, gradient of b (empty when not wanted), the scale each
    gradient still owes)."""
    args = (logits_a, logits_b, ignore_mask, ignore_index, threshold, norm_mode, norm_value)
    args += (label_a, conf_a, label_b, conf_b, need_grad_a, need_grad_b)
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_cps(*args, size, align_corners))
    from ..triton.cps import cps as triton_cps

    return triton_cps(*args, size and tuple(size), align_corners)


@_cps_op.register_fake
def _(logits_a, logits_b, ignore_mask, ignore_index, threshold, norm_mode, norm_value, label_a, conf_a, label_b,
      conf_b, need_grad_a, need_grad_b, size, align_corners, backend):  # fmt: skip
    scalar = logits_a.new_empty((), dtype=torch.float32)
    grads = saved_grad_buffer(logits_a, need_grad_a), saved_grad_buffer(logits_b, need_grad_b)
    return scalar, torch.empty_like(scalar), *grads, torch.empty_like(scalar), torch.empty_like(scalar)


def _setup_context(ctx, inputs, output):
    _, ratio, grad_a, grad_b, post_a, post_b = output
    ctx.mark_non_differentiable(ratio, grad_a, grad_b, post_a, post_b)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_a, grad_b, post_a, post_b)
    ctx.dtypes = inputs[0].dtype, inputs[1].dtype


def _backward(ctx, g_loss, *_):
    grad_a, grad_b, post_a, post_b = ctx.saved_tensors
    out = [None, None]
    for k, (grad, post) in enumerate(((grad_a, post_a), (grad_b, post_b))):
        if ctx.needs_input_grad[k] and g_loss is not None:
            out[k] = first_order_only(scaled_grad(grad, g_loss * post, ctx.dtypes[k]))
    return (*out,) + (None,) * 14


_cps_op.register_autograd(_backward, setup_context=_setup_context)


def _targets(targets: object, name: str, logits: torch.Tensor, size, ignore_index: int):
    """(label, confidence) maps a network provides, checked; None stays None."""
    if targets is None:
        return None, None
    if not isinstance(targets, (tuple, list)) or len(targets) != 2:
        raise TypeError(f"{name}: expected None or a (label, confidence) pair of (N, H, W) maps, got {targets!r}")
    label = _checks.target(targets[0], logits, f"{name}[0] (label)", "logits_a", size)
    conf = _checks.pixel_map(
        targets[1], f"{name}[1] (confidence)", logits, "logits_a", _checks.FLOAT_DTYPES, "a floating dtype", size
    )
    if label.device.type == "cpu" and not torch.compiler.is_compiling():
        _checks.target_values(label, logits.shape[1], ignore_index, f"{name}[0] (label)")
    return label, conf.detach()


def cps_loss(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    ignore_mask: torch.Tensor | None = None,
    threshold: float = 0.0,
    ignore_index: int = 255,
    normalizer: str | float = "valid",
    targets_a: tuple[torch.Tensor, torch.Tensor] | None = None,
    targets_b: tuple[torch.Tensor, torch.Tensor] | None = None,
    return_mask_ratio: bool = False,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross pseudo-supervision: ``CE(logits_a, argmax logits_b) + CE(logits_b, argmax logits_a)``,
    each term summed over the pixels that are not ignored and (``threshold > 0``) whose *peer's*
    confidence (max softmax) is at least ``threshold``, then divided by the normalizer.

    Args:
        logits_a, logits_b: (N, C, H, W) logits of the two networks on the same images. Each gets
            the gradient of its own cross-entropy term only: pseudo-labels are constants.
        ignore_mask: optional (N, H, W); bool (True = ignored) or integer (``== ignore_index`` =
            ignored).
        threshold: in [0, 1]; 0 (CPS) trains on every pixel that is not ignored.
        normalizer: ``"valid"`` (non-ignored pixels, CPS), ``"confident"`` (each term by the pixels
            it trains on), ``"total"`` (N*H*W) or a positive number. Zero denominators give 0.
        targets_a, targets_b: (label, confidence) maps, (N, H, W) each, that replace the argmax and
            confidence of ``logits_a`` (resp. ``logits_b``) as the target of the *other* network, as
            with CutMix, where a network's pseudo-labels for the mixed image are mixed from its
            passes on the two source images (:func:`semiseg_fast.mixing.mix_pseudo_labels`).
            Labels equal to ``ignore_index`` train nothing.
        return_mask_ratio: also return the share of (pixel, term) pairs that train: the pixels both
            terms train on over twice the non-ignored pixels.
        size, align_corners: the loss of both logits upsampled by ``F.interpolate(x, size,
            mode="bilinear", align_corners=align_corners)``, computed without the upsampled tensors:
            ``ignore_mask`` and the target maps are (N, *size), the gradients come back at the
            logits' own size. Both logits must have the same size.
    """
    logits_a = _checks.logits(logits_a, "logits_a")
    logits_b = _checks.logits(logits_b, "logits_b")
    if logits_b.shape != logits_a.shape:
        raise ValueError(
            f"logits_b: expected the shape of logits_a {tuple(logits_a.shape)}, got {tuple(logits_b.shape)}"
        )
    _checks.same_device(logits_a, logits_b, "logits_b", "logits_a")
    threshold, ignore_index, norm_mode, norm_value = check_options(threshold, ignore_index, normalizer)
    size, align_corners = _checks.output_size(size, logits_a, align_corners)
    ignore_mask = _checks.ignore_mask(ignore_mask, logits_a, "logits_a", size)
    label_a, conf_a = _targets(targets_a, "targets_a", logits_a, size, ignore_index)
    label_b, conf_b = _targets(targets_b, "targets_b", logits_a, size, ignore_index)
    impl = resolve(logits_a.device)
    refuse_function_transforms(logits_a, impl)
    refuse_function_transforms(logits_b, impl)
    if impl == "reference":
        return reference.cps_loss(
            interpolate(logits_a, size, align_corners),
            interpolate(logits_b, size, align_corners),
            ignore_mask,
            threshold,
            ignore_index,
            normalizer,
            None if label_a is None else (label_a, conf_a),
            None if label_b is None else (label_b, conf_b),
            return_mask_ratio,
        )
    grad_on = torch.is_grad_enabled()
    loss, ratio, *_ = _cps_op(
        logits_a,
        logits_b,
        ignore_mask,
        ignore_index,
        threshold,
        norm_mode,
        norm_value,
        label_a,
        conf_a,
        label_b,
        conf_b,
        grad_on and logits_a.requires_grad,
        grad_on and logits_b.requires_grad,
        size and list(size),
        align_corners,
        impl,
    )
    return (loss, ratio) if return_mask_ratio else loss
