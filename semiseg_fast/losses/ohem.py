"""OHEM cross-entropy as a module: U2PL's ``OhemCrossEntropy2dTensor`` (its Cityscapes supervised loss)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import ohem_cross_entropy
from ..ops.ohem import check_options


class OhemCrossEntropy(nn.Module):
    """``OhemCrossEntropy(0.7, 100000)(logits, target)``: the mean cross-entropy over the pixels whose
    true class has probability at most 0.7, or the 100000 hardest if that keeps fewer. See
    :func:`semiseg_fast.ohem_cross_entropy` for the exact rule."""

    def __init__(self, threshold: float = 0.7, min_kept: int = 100000, ignore_index: int = 255) -> None:
        super().__init__()
        self.threshold, self.min_kept, self.ignore_index = check_options(threshold, min_kept, ignore_index)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        size: tuple[int, int] | None = None,
        align_corners: bool = False,
    ) -> torch.Tensor:
        """``size``, ``align_corners``: the loss of the logits upsampled bilinearly to ``size`` (the
        target's (H, W)), without the upsampled tensor (see :func:`semiseg_fast.ohem_cross_entropy`)."""
        return ohem_cross_entropy(
            logits, target, self.threshold, self.min_kept, self.ignore_index, size=size, align_corners=align_corners
        )

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, min_kept={self.min_kept}, ignore_index={self.ignore_index}"
