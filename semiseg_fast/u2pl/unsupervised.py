"""U2PL's unsupervised loss: entropy-percentile filtering, then weighted cross-entropy."""

from __future__ import annotations

import torch

from .. import _checks
from ..base import not_ignored
from ..ops import entropy_percentile, pixel_stats, pseudo_label_cross_entropy


def reliable_pixels(valid: torch.Tensor, entropy: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The pixels the unsupervised loss trains on: valid, with a teacher entropy under the threshold."""
    return valid & ~(entropy >= threshold)


def _loss_from_entropy(student_logits, pseudo_label, entropy, threshold, ignore_index):
    keep = reliable_pixels(not_ignored(pseudo_label, ignore_index), entropy, threshold)
    n, _, h, w = student_logits.shape
    # official: weight = N*H*W / kept, times the mean over the kept pixels
    denom = keep.sum().double().square() / float(n * h * w)
    return pseudo_label_cross_entropy(
        student_logits, pseudo_label, weight=keep, ignore_index=ignore_index, normalizer=denom.to(torch.float32)
    )


def u2pl_unsupervised_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    pseudo_label: torch.Tensor,
    percent: float,
    ignore_index: int = 255,
) -> torch.Tensor:
    """U2PL's unsupervised loss (official ``compute_unsupervised_loss``).

    Drops the valid pixels whose teacher entropy is at or above the ``percent``-th percentile of
    the valid pixels' entropies, then returns ``N*H*W / kept`` times the mean cross-entropy of
    the student over the kept pixels. One pass over the teacher logits (entropy), one over the
    student logits (loss and gradient), an exact percentile in between, no host sync.

    Args:
        student_logits: (N, C, H, W) logits of the (augmented) unlabeled batch.
        teacher_logits: (N, C, H, W) teacher logits whose entropy decides the drop (detached).
        pseudo_label: (N, H, W) integer labels; ``ignore_index`` pixels are never used.
        percent: the percentile in [0, 100]; see :func:`semiseg_fast.u2pl.drop_percent`.

    Differences from the official code: the entropy is the exact ``-sum p log p`` (the official
    ``-sum p log(p + 1e-10)`` differs by up to about C * 1e-10), the percentile is NumPy's in
    float64, and a batch with no kept pixel gives 0 instead of NaN.
    """
    student_logits = _checks.logits(student_logits, "student_logits")
    teacher_logits = _checks.logits(teacher_logits, "teacher_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected the shape of student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    pseudo_label = _checks.target(pseudo_label, student_logits, "pseudo_label", "student_logits")
    percent = _checks.number(percent, "percent", low=0.0, high=100.0)
    ignore_index = _checks.integer(ignore_index, "ignore_index")
    with torch.no_grad():
        entropy = pixel_stats(teacher_logits.detach()).entropy
        threshold = entropy_percentile(entropy, not_ignored(pseudo_label, ignore_index), percent)
    return _loss_from_entropy(student_logits, pseudo_label, entropy, threshold, ignore_index)
