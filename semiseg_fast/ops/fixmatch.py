"""fixmatch_loss: UniMatch/FixMatch's unlabeled loss with the teacher statistics and the student
cross-entropy fused: each logits tensor is read once and the teacher never gets a gradient."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base import saved_grad_buffer
from ..base.resample import interpolate
from ._grad import refuse_function_transforms, register_loss_autograd


@torch.library.custom_op("semiseg_fast::fixmatch_loss", mutates_args=())
def _fixmatch_op(
    student: torch.Tensor,
    teacher: torch.Tensor,
    threshold: float,
    ignore_mask: torch.Tensor | None,
    ignore_index: int,
    norm_mode: int,
    norm_value: float,
    need_grad: bool,
    size: list[int] | None,
    align_corners: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, mask ratio, gradient or an empty tensor, scale still owed by the gradient)."""
    args = (student, teacher, threshold, ignore_mask, ignore_index, norm_mode, norm_value, need_grad)
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_fixmatch(*args, size, align_corners))
    from ..triton.fixmatch import fixmatch as triton_fixmatch

    return triton_fixmatch(*args, size and tuple(size), align_corners)


@_fixmatch_op.register_fake
def _(
    student,
    teacher,
    threshold,
    ignore_mask,
    ignore_index,
    norm_mode,
    norm_value,
    need_grad,
    size,
    align_corners,
    backend,
):
    scalar = student.new_empty((), dtype=torch.float32)
    return scalar, torch.empty_like(scalar), saved_grad_buffer(student, need_grad), torch.empty_like(scalar)


register_loss_autograd(_fixmatch_op, 11)


def check_options(threshold: object, ignore_index: object, normalizer: object) -> tuple[float, int, int, float]:
    """(threshold, ignore_index, normalizer code, normalizer value): the one check of these
    arguments, for the op and for :class:`semiseg_fast.FixMatchLoss` at construction."""
    threshold = _checks.number(threshold, "threshold", low=0.0, high=1.0)
    ignore_index = _checks.integer(ignore_index, "ignore_index")
    norm_mode, norm_value = _checks.normalizer(normalizer, ("valid", "confident", "total"))
    return threshold, ignore_index, norm_mode, norm_value


def fixmatch_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    threshold: float = 0.95,
    ignore_mask: torch.Tensor | None = None,
    ignore_index: int = 255,
    normalizer: str | float = "valid",
    return_mask_ratio: bool = False,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """UniMatch-style unlabeled loss: ``sum(CE(student, argmax teacher) * [conf >= threshold] *
    [not ignored]) / #not-ignored``, with ``conf`` the teacher's max softmax probability.

    Args:
        student_logits: (N, C, H, W) logits of the strong view (gets the gradient).
        teacher_logits: (N, C, H, W) logits of the weak view; treated as detached.
        threshold: confidence threshold in [0, 1] (UniMatch: 0.95).
        ignore_mask: optional (N, H, W); bool (True = ignored) or integer (``== ignore_index``
            = ignored, UniMatch's padding convention).
        normalizer: ``"valid"`` (non-ignored pixels, UniMatch), ``"confident"`` (pixels that pass
            the threshold), ``"total"`` (N*H*W) or a positive number. Zero denominators give 0.
        return_mask_ratio: also return the fraction of non-ignored pixels that pass the threshold.
        size, align_corners: the loss of both logits upsampled by ``F.interpolate(x, size,
            mode="bilinear", align_corners=align_corners)``, computed without the upsampled
            tensors: ``ignore_mask`` is (N, *size), the gradient comes back at the logits' own size.
            Student and teacher must have the same size.

    Pixels that are ignored or below the threshold contribute exactly 0 (even with non-finite
    student logits there).
    """
    student_logits = _checks.logits(student_logits, "student_logits")
    teacher_logits = _checks.logits(teacher_logits, "teacher_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected the shape of student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    _checks.same_device(student_logits, teacher_logits, "teacher_logits", "student_logits")
    threshold, ignore_index, norm_mode, norm_value = check_options(threshold, ignore_index, normalizer)
    size, align_corners = _checks.output_size(size, student_logits, align_corners)
    ignore_mask = _checks.ignore_mask(ignore_mask, student_logits, "student_logits", size)
    impl = resolve(student_logits.device)
    refuse_function_transforms(student_logits, impl)
    if impl == "reference":
        return reference.fixmatch_loss(
            interpolate(student_logits, size, align_corners),
            interpolate(teacher_logits.detach(), size, align_corners),
            threshold,
            ignore_mask,
            ignore_index,
            normalizer,
            return_mask_ratio,
        )
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, ratio, _, _ = _fixmatch_op(
        student_logits,
        teacher_logits.detach(),
        threshold,
        ignore_mask,
        ignore_index,
        norm_mode,
        norm_value,
        need_grad,
        size and list(size),
        align_corners,
        impl,
    )
    return (loss, ratio) if return_mask_ratio else loss
