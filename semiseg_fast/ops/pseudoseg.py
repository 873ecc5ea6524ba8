"""PseudoSeg's calibrated fusion (Zou et al., ICLR 2021) and its consistency loss, fused: one
reduction for the global logit scale, then one pass that reads the decoder, SGC and student logits
once, builds the sharpened target per pixel and writes the loss partials and the student's gradient."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base import saved_grad_buffer
from ..base.resample import interpolate
from ._grad import refuse_function_transforms, register_loss_autograd


@torch.library.custom_op("semiseg_fast::pseudoseg_scale", mutates_args=())
def _scale_op(
    decoder: torch.Tensor, sgc: torch.Tensor, size: list[int] | None, align_corners: bool, backend: str
) -> torch.Tensor:
    if backend == "cpp":
        return torch.ops.semiseg_fast._cpp_pseudoseg_scale(decoder, sgc, size, align_corners)
    from ..triton.pseudoseg import logit_scale

    return logit_scale(decoder, sgc, size and tuple(size), align_corners)


@_scale_op.register_fake
def _(decoder, sgc, size, align_corners, backend):
    return decoder.new_empty((), dtype=torch.float32)


@torch.library.custom_op("semiseg_fast::pseudoseg_loss", mutates_args=())
def _loss_op(
    student: torch.Tensor,
    decoder: torch.Tensor,
    sgc: torch.Tensor,
    ignore_mask: torch.Tensor | None,
    scale: torch.Tensor,
    gamma: float,
    temperature: float,
    threshold: float,
    soft: bool,
    norm_mode: int,
    norm_value: float,
    need_grad: bool,
    size: list[int] | None,
    align_corners: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, mask ratio, gradient or an empty tensor, scale still owed by the gradient)."""
    args = (
        student,
        decoder,
        sgc,
        ignore_mask,
        scale,
        gamma,
        temperature,
        threshold,
        soft,
        norm_mode,
        norm_value,
        need_grad,
    )
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_pseudoseg(*args, size, align_corners))
    from ..triton.pseudoseg import pseudoseg_loss

    return pseudoseg_loss(*args, size and tuple(size), align_corners)


@_loss_op.register_fake
def _(
    student,
    decoder,
    sgc,
    ignore_mask,
    scale,
    gamma,
    temperature,
    threshold,
    soft,
    norm_mode,
    norm_value,
    need_grad,
    size,
    align_corners,
    backend,
):
    scalar = student.new_empty((), dtype=torch.float32)
    return scalar, torch.empty_like(scalar), saved_grad_buffer(student, need_grad), torch.empty_like(scalar)


register_loss_autograd(_loss_op, 15)


def _check_pair(decoder_logits, sgc_logits):
    decoder_logits = _checks.logits(decoder_logits, "decoder_logits")
    sgc_logits = _checks.logits(sgc_logits, "sgc_logits")
    if sgc_logits.shape != decoder_logits.shape:
        raise ValueError(
            f"sgc_logits: expected the shape of decoder_logits {tuple(decoder_logits.shape)}, "
            f"got {tuple(sgc_logits.shape)}"
        )
    _checks.same_device(decoder_logits, sgc_logits, "sgc_logits", "decoder_logits")
    return decoder_logits.detach(), sgc_logits.detach()


def _check_fusion_args(gamma, temperature):
    gamma = _checks.number(gamma, "gamma", low=0.0, high=1.0)
    temperature = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    return gamma, temperature


def logit_scale(
    decoder_logits: torch.Tensor,
    sgc_logits: torch.Tensor,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """PseudoSeg's global scale ``1 / sqrt(mean(v^2) + 1e-8)`` over every value of both logit
    tensors, as a 0-dim float32 tensor on their device (no host sync). With ``size``, over the
    values of both upsampled bilinearly to ``size`` (without the upsampled tensors)."""
    decoder_logits, sgc_logits = _check_pair(decoder_logits, sgc_logits)
    size, align_corners = _checks.output_size(size, decoder_logits, align_corners)
    impl = resolve(decoder_logits.device)
    if impl == "reference":
        up = lambda x: interpolate(x, size, align_corners)  # noqa: E731
        return reference.pseudoseg.logit_scale(up(decoder_logits), up(sgc_logits)).float()
    return _scale_op(decoder_logits, sgc_logits, size and list(size), align_corners, impl)


def calibrated_fusion(
    decoder_logits: torch.Tensor,
    sgc_logits: torch.Tensor,
    gamma: float = 0.5,
    temperature: float = 0.5,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """PseudoSeg's pseudo-label: ``sharpen(gamma * softmax(s * p) + (1 - gamma) * softmax(s * m), T)``
    with ``s`` from :func:`logit_scale`; (N, C, H, W) float32 probabilities, no gradient. With
    ``size``, the target of both logits upsampled bilinearly to ``size``, (N, C, *size).

    This materialises the target, for inspection or for your own loss; the training loss
    :func:`pseudoseg_consistency_loss` builds it per pixel and never stores it.
    """
    decoder_logits, sgc_logits = _check_pair(decoder_logits, sgc_logits)
    gamma, temperature = _check_fusion_args(gamma, temperature)
    size, align_corners = _checks.output_size(size, decoder_logits, align_corners)
    with torch.no_grad():
        s = logit_scale(decoder_logits, sgc_logits, size, align_corners)
        decoder_logits = interpolate(decoder_logits, size, align_corners)
        sgc_logits = interpolate(sgc_logits, size, align_corners)
        if resolve(decoder_logits.device) == "reference":
            return reference.pseudoseg.fused_target(decoder_logits, sgc_logits, s, gamma, temperature).float()
        mix = gamma * torch.softmax(s * decoder_logits.float(), dim=1)
        mix += (1.0 - gamma) * torch.softmax(s * sgc_logits.float(), dim=1)
        return torch.softmax(mix.log_() / temperature, dim=1)  # mix^(1/T), normalised, in log space


def pseudoseg_consistency_loss(
    student_logits: torch.Tensor,
    decoder_logits: torch.Tensor,
    sgc_logits: torch.Tensor,
    valid: torch.Tensor | None = None,
    threshold: float = 0.0,
    soft: bool = True,
    gamma: float = 0.5,
    temperature: float = 0.5,
    normalizer: str | float = "valid",
    return_mask_ratio: bool = False,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PseudoSeg's unlabeled loss: ``sum(valid * CE(student, q)) / sum(valid)`` with ``q`` the
    :func:`calibrated_fusion` of the weak view's decoder and SGC logits (both treated as detached).

    Args:
        student_logits: (N, C, H, W) logits of the strong view (gets the gradient).
        decoder_logits, sgc_logits: (N, C, H, W) logits of the weak view from the decoder and the
            self-attention Grad-CAM head.
        valid: optional (N, H, W) bool or integer map, nonzero where the pixel counts (PseudoSeg
            marks the Cutout region 0).
        threshold: pixels whose sharpened target has ``max q < threshold`` are dropped; 0 (PseudoSeg's
            default) keeps every valid pixel.
        soft: soft cross-entropy against ``q`` (default) or hard cross-entropy against ``argmax q``.
        gamma, temperature: fusion weight of the decoder and sharpening temperature (0.5, 0.5).
        normalizer: ``"valid"`` (default), ``"confident"`` (valid pixels over the threshold),
            ``"total"`` (N*H*W) or a positive number. Zero denominators give 0.
        return_mask_ratio: also return the fraction of valid pixels over the threshold.
        size, align_corners: the loss of the three logits upsampled by ``F.interpolate(x, size,
            mode="bilinear", align_corners=align_corners)`` (the global scale too is taken over
            the upsampled values), computed without the upsampled tensors: ``valid`` is
            (N, *size), the gradient comes back at the logits' own size. All three logits must
            have the same size.
    """
    student_logits = _checks.logits(student_logits, "student_logits")
    decoder_logits, sgc_logits = _check_pair(decoder_logits, sgc_logits)
    if decoder_logits.shape != student_logits.shape:
        raise ValueError(
            f"decoder_logits: expected the shape of student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(decoder_logits.shape)}"
        )
    _checks.same_device(student_logits, decoder_logits, "decoder_logits", "student_logits")
    gamma, temperature = _check_fusion_args(gamma, temperature)
    threshold = _checks.number(threshold, "threshold", low=0.0, high=1.0)
    if not isinstance(soft, bool):
        raise TypeError(f"soft: expected a bool, got {soft!r}")
    size, align_corners = _checks.output_size(size, student_logits, align_corners)
    if valid is not None:
        valid = _checks.pixel_map(
            valid,
            "valid",
            student_logits,
            "student_logits",
            _checks.INT_DTYPES + (torch.bool,),
            "a bool or integer dtype",
            size,
        )
    norm_mode, norm_value = _checks.normalizer(normalizer, ("valid", "confident", "total"))
    impl = resolve(student_logits.device)
    refuse_function_transforms(student_logits, impl)
    if impl == "reference":
        up = lambda x: interpolate(x, size, align_corners)  # noqa: E731
        return reference.pseudoseg.pseudoseg_consistency_loss(
            up(student_logits),
            up(decoder_logits),
            up(sgc_logits),
            valid,
            threshold,
            soft,
            gamma,
            temperature,
            normalizer,
            return_mask_ratio,
        )
    ignore_mask = None if valid is None else valid == 0
    size_arg = size and list(size)
    scale = _scale_op(decoder_logits, sgc_logits, size_arg, align_corners, impl)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, ratio, _, _ = _loss_op(
        student_logits,
        decoder_logits,
        sgc_logits,
        ignore_mask,
        scale,
        gamma,
        temperature,
        threshold,
        soft,
        norm_mode,
        norm_value,
        need_grad,
        size_arg,
        align_corners,
        impl,
    )
    return (loss, ratio) if return_mask_ratio else loss
