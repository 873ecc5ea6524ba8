"""U2PL's unsupervised loss: entropy-percentile filtering, then weighted cross-entropy."""

from __future__ import annotations

import torch

from .. import _checks
from ..base import not_ignored
from ..ops import PixelStats, entropy_percentile, pixel_stats, pseudo_label_cross_entropy


def teacher_entropy(
    teacher: object,
    like: torch.Tensor,
    name: str,
    like_name: str,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """The teacher's per-pixel entropy (N, H, W), from its logits (N, C, h, w) shaped like ``like``
    (one pass), or as given: a :class:`PixelStats` or an entropy map from a pass already made.
    With ``size`` (an output size from :func:`semiseg_fast._checks.output_size`, None when ``like``
    is read as it is), the logits' entropy is that of their bilinear upsampling to ``size``, and a
    given entropy map must already be (N, *size)."""
    if isinstance(teacher, PixelStats):
        teacher = teacher.entropy
    teacher = _checks.tensor(teacher, name)
    n, _, h, w = like.shape
    if size is not None:
        h, w = size
    if teacher.dim() == 4:
        if teacher.shape != like.shape:
            raise ValueError(
                f"{name}: expected the shape of {like_name} {tuple(like.shape)}, got {tuple(teacher.shape)}"
            )
        with torch.no_grad():
            logits = _checks.logits(teacher.detach(), name)
            return pixel_stats(logits, size=size, align_corners=align_corners).entropy
    if tuple(teacher.shape) != (n, h, w) or not teacher.dtype.is_floating_point:
        at = f" (at size={size})" if size is not None else ""
        raise ValueError(
            f"{name}: expected teacher logits {tuple(like.shape)}, their PixelStats, or a floating entropy map "
            f"{(n, h, w)}{at}, got {tuple(teacher.shape)} {teacher.dtype}"
        )
    _checks.same_device(like, teacher, name, like_name)
    return teacher.detach()


def reliable_pixels(valid: torch.Tensor, entropy: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The pixels the unsupervised loss trains on: valid, with a teacher entropy under the threshold."""
    return valid & ~(entropy >= threshold)


def _loss_from_entropy(student_logits, pseudo_label, entropy, threshold, ignore_index, size=None, align_corners=False):
    keep = reliable_pixels(not_ignored(pseudo_label, ignore_index), entropy, threshold)
    # official: weight = N*H*W / kept, times the mean over the kept pixels (N*H*W: the pseudo-labels', full size)
    denom = keep.sum().double().square() / float(pseudo_label.numel())
    return pseudo_label_cross_entropy(
        student_logits,
        pseudo_label,
        weight=keep,
        ignore_index=ignore_index,
        normalizer=denom.to(torch.float32),
        size=size,
        align_corners=align_corners,
    )


def u2pl_unsupervised_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | PixelStats,
    pseudo_label: torch.Tensor,
    percent: float,
    ignore_index: int = 255,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """U2PL's unsupervised loss (official ``compute_unsupervised_loss``).

    Drops the valid pixels whose teacher entropy is at or above the ``percent``-th percentile of
    the valid pixels' entropies, then returns ``N*H*W / kept`` times the mean cross-entropy of
    the student over the kept pixels. One pass over the teacher logits (entropy), one over the
    student logits (loss and gradient), an exact percentile in between, no host sync. A caller
    that already made the teacher's pass hands over its statistics, and the logits are not read again.

    Args:
        student_logits: (N, C, H, W) logits of the (augmented) unlabeled batch.
        teacher: what decides the drop (no gradient): the (N, C, H, W) teacher logits, their
            :class:`~semiseg_fast.PixelStats`, or an (N, H, W) entropy map. U2PL takes the entropy
            from the teacher's pass over the mixed images, the pseudo-labels from another pass.
        pseudo_label: (N, H, W) integer labels; ``ignore_index`` pixels are never used.
        percent: the percentile in [0, 100]; see :func:`semiseg_fast.u2pl.drop_percent`.
        size, align_corners: the loss of the logits upsampled by ``F.interpolate(x, size,
            mode="bilinear", align_corners=align_corners)``, without the upsampled tensors: the
            student logits and teacher logits stay (N, C, h, w) at the decoder's resolution, while
            ``pseudo_label`` and a given entropy map or PixelStats are (N, *size); the percentile is
            over the (N, *size) pixels, the gradient comes back at the logits' own size.

    Differences from the official code: the entropy is the exact ``-sum p log p`` (the official
    ``-sum p log(p + 1e-10)`` differs by up to about C * 1e-10), the percentile is NumPy's in
    float64, and a batch with no kept pixel gives 0 instead of NaN.
    """
    student_logits = _checks.logits(student_logits, "student_logits")
    size, align_corners = _checks.output_size(size, student_logits, align_corners)
    entropy = teacher_entropy(teacher, student_logits, "teacher", "student_logits", size, align_corners)
    pseudo_label = _checks.target(pseudo_label, student_logits, "pseudo_label", "student_logits", size)
    percent = _checks.number(percent, "percent", low=0.0, high=100.0)
    ignore_index = _checks.integer(ignore_index, "ignore_index")
    with torch.no_grad():
        threshold = entropy_percentile(entropy, not_ignored(pseudo_label, ignore_index), percent)
    return _loss_from_entropy(student_logits, pseudo_label, entropy, threshold, ignore_index, size, align_corners)
