"""The FixMatch/UniMatch unlabeled loss as a module."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import fixmatch_loss
from ..ops.fixmatch import check_options


class FixMatchLoss(nn.Module):
    """``FixMatchLoss(threshold=0.95)(pred_strong, pred_weak, ignore_mask)``: cross-entropy of the
    strong view against the weak view's confident argmax, over the non-ignored pixels' count
    (UniMatch's ``loss_u_s``). After each call ``last_mask_ratio`` holds the fraction of
    non-ignored pixels that passed the threshold (a 0-dim tensor, no host sync).
    See :func:`semiseg_fast.fixmatch_loss` for the arguments."""

    def __init__(self, threshold: float = 0.95, ignore_index: int = 255, normalizer: str | float = "valid") -> None:
        super().__init__()
        check_options(threshold, ignore_index, normalizer)  # refused here, not at the first call
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.normalizer = normalizer
        self.last_mask_ratio: torch.Tensor | None = None

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        ignore_mask: torch.Tensor | None = None,
        *,
        size: tuple[int, int] | None = None,
        align_corners: bool = False,
    ) -> torch.Tensor:
        """``size``, ``align_corners``: the loss of both logits upsampled bilinearly to ``size``
        (``ignore_mask``'s (H, W)), without the upsampled tensors (see :func:`semiseg_fast.fixmatch_loss`)."""
        loss, ratio = fixmatch_loss(
            student_logits,
            teacher_logits,
            self.threshold,
            ignore_mask,
            self.ignore_index,
            self.normalizer,
            return_mask_ratio=True,
            size=size,
            align_corners=align_corners,
        )
        self.last_mask_ratio = ratio
        return loss

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, ignore_index={self.ignore_index}, normalizer={self.normalizer!r}"
