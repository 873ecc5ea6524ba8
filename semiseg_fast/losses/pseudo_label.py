"""Cross-entropy against (pseudo-)labels as a module: a drop-in for nn.CrossEntropyLoss(ignore_index=255)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import pseudo_label_cross_entropy
from ..ops.cross_entropy import check_options


class PseudoLabelCrossEntropy(nn.Module):
    """``PseudoLabelCrossEntropy()(logits, target)`` equals
    ``nn.CrossEntropyLoss(ignore_index=255)(logits, target)`` for (N, C, H, W) logits, in one
    fused pass, with uint8 targets accepted and an optional per-pixel ``weight`` in ``forward``.
    See :func:`semiseg_fast.pseudo_label_cross_entropy` for the arguments."""

    def __init__(self, ignore_index: int = 255, reduction: str = "mean", normalizer: str | float = "valid") -> None:
        super().__init__()
        check_options(ignore_index, reduction, normalizer)  # refused here, not at the first call
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.normalizer = normalizer

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        *,
        size: tuple[int, int] | None = None,
        align_corners: bool = False,
    ) -> torch.Tensor:
        """``size``, ``align_corners``: the loss of the logits upsampled bilinearly to ``size`` (the
        target's (H, W)), without the upsampled tensor (see :func:`semiseg_fast.pseudo_label_cross_entropy`)."""
        return pseudo_label_cross_entropy(
            logits,
            target,
            weight,
            self.ignore_index,
            self.reduction,
            self.normalizer,
            size=size,
            align_corners=align_corners,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, normalizer={self.normalizer!r}"
