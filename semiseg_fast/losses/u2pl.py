"""U2PL's three losses with its epoch schedules, as one module for a user's training loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks
from ..base import not_ignored
from ..base.resample import interpolate
from ..ops import PixelStats, entropy_percentile
from ..u2pl import ClassMemoryBank, ContrastiveDraws, alpha_t, drop_percent, u2pl_contrastive_loss
from ..u2pl.unsupervised import _loss_from_entropy, reliable_pixels, teacher_entropy
from .ohem import OhemCrossEntropy
from .pseudo_label import PseudoLabelCrossEntropy


@dataclass
class U2PLOutput:
    total: torch.Tensor
    supervised: torch.Tensor
    unsupervised: torch.Tensor
    contrastive: torch.Tensor
    drop_percent: float  # the unsupervised loss's entropy percentile this epoch
    alpha_t: float  # the contrastive term's reliable/unreliable percentage this epoch


class U2PLLoss(nn.Module):
    """U2PL (Wang et al., CVPR 2022): supervised CE + entropy-filtered unsupervised CE +
    contrastive loss with unreliable pixels as negatives, with U2PL's per-epoch schedules.

    Per step, given the student's predictions on the labeled and the (CutMix-ed) unlabeled
    batch, the pseudo-labels, and the teacher's logits on the same unlabeled batch::

        out = criterion(pred_l, label_l, pred_u, pseudo_u, teacher_u, epoch,
                        rep=rep_all, rep_teacher=rep_all_teacher, prob_teacher=prob_all_teacher)
        out.total.backward()

    ``pred_*`` are full-resolution (N, C, H, W) logits, or with ``size=(H, W)`` (and
    ``align_corners``, F.interpolate's meaning) the decoder's (N, C, h, w) logits, read as if
    upsampled bilinearly to ``size`` without the upsampled tensors (the labels, pseudo-labels and
    any per-pixel map stay (N, H, W)); ``teacher_u`` the teacher's logits on the unlabeled batch
    (shaped like ``pred_u``), or their :class:`~semiseg_fast.PixelStats` or entropy map (N, H, W)
    when the caller already made that pass (it is then not read again; with ``size``, made at
    ``size``, e.g. by ``pixel_stats(logits, size=size, align_corners=...)``); ``rep``, ``rep_teacher``
    (B_l + B_u, D, h, w) and ``prob_teacher`` (B_l + B_u, C, h, w) are at feature resolution, labeled
    images first, as in the official ``train_semi.py``. The contrastive term is skipped when
    ``rep`` is None or the module was built with ``contrastive=False``.

    Defaults follow the paper: contrastive weight 0.1 (the official code uses 1, divided by the
    number of GPUs through an all_reduce that autograd does not see, so 0.25 on 4 GPUs), negatives
    as the paper defines them; ``official_quirks=True`` switches the contrastive term to the
    official code's behaviour (see :func:`semiseg_fast.u2pl.u2pl_contrastive_loss`). The memory
    bank is a submodule: it moves with ``.to()`` and is saved in ``state_dict()``. ``supervised_loss``
    (default cross-entropy with ``ignore_index``) replaces the labeled loss, e.g. with
    :class:`semiseg_fast.OhemCrossEntropy` as in U2PL's Cityscapes recipe.
    """

    def __init__(
        self,
        num_classes: int,
        epochs: int,
        rep_dim: int = 256,
        ignore_index: int = 255,
        drop_percent: float = 80.0,
        unsupervised_weight: float = 1.0,
        contrastive: bool = True,
        contrastive_weight: float = 0.1,
        alpha_0: float = 20.0,
        low_rank: int = 3,
        high_rank: int = 20,
        current_class_threshold: float = 0.3,
        current_class_negative_threshold: float = 1.0,
        temperature: float = 0.5,
        num_queries: int = 256,
        num_negatives: int = 50,
        bank_capacity: int = 30000,
        first_class_capacity: int | None = 50000,
        push_limit: int = 4096,
        sup_only_epochs: int = 0,
        official_quirks: bool = False,
        supervised_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = _checks.integer(num_classes, "num_classes")
        self.epochs = _checks.integer(epochs, "epochs")
        if self.num_classes < 2 or self.epochs < 1:
            raise ValueError(f"num_classes, epochs: expected >= 2 and >= 1, got {num_classes}, {epochs}")
        if contrastive and low_rank >= num_classes:
            raise ValueError(
                f"low_rank: expected < num_classes={num_classes}, got {low_rank}: the contrastive term "
                "would have no negatives (use low_rank=1 for 2- or 3-class datasets)"
            )
        if contrastive and high_rank <= low_rank:
            raise ValueError(f"high_rank: expected > low_rank={low_rank}, got {high_rank}")
        self.ignore_index = ignore_index
        # (logits, labels) -> loss on the labeled batch; OhemCrossEntropy for U2PL's Cityscapes recipe
        self.supervised_loss = supervised_loss or PseudoLabelCrossEntropy(ignore_index=ignore_index)
        self.initial_drop_percent = drop_percent
        self.unsupervised_weight = unsupervised_weight
        self.contrastive_weight = contrastive_weight
        self.alpha_0 = alpha_0
        self.sup_only_epochs = sup_only_epochs
        self.contrastive_kwargs = dict(
            low_rank=low_rank,
            high_rank=high_rank,
            current_class_threshold=current_class_threshold,
            current_class_negative_threshold=current_class_negative_threshold,
            temperature=temperature,
            num_queries=num_queries,
            num_negatives=num_negatives,
            push_limit=push_limit,
            ignore_index=ignore_index,
            official_quirks=official_quirks,
        )
        self.bank: ClassMemoryBank | None = None
        if contrastive:
            caps = [bank_capacity] * num_classes
            if first_class_capacity is not None:
                caps[0] = first_class_capacity
            self.bank = ClassMemoryBank(num_classes, rep_dim, capacity=caps)

    def forward(
        self,
        pred_l: torch.Tensor,
        label_l: torch.Tensor,
        pred_u: torch.Tensor,
        pseudo_u: torch.Tensor,
        teacher_u: torch.Tensor | PixelStats,
        epoch: int,
        rep: torch.Tensor | None = None,
        rep_teacher: torch.Tensor | None = None,
        prob_teacher: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        draws: ContrastiveDraws | None = None,
        size: tuple[int, int] | None = None,
        align_corners: bool = False,
    ) -> U2PLOutput:
        pred_u = _checks.logits(pred_u, "pred_u")
        out_size, align_corners = _checks.output_size(size, pred_u, align_corners)
        pseudo_u = _checks.target(pseudo_u, pred_u, "pseudo_u", "pred_u", out_size)
        sup = self._supervised(pred_l, label_l, size, align_corners)
        percent = drop_percent(epoch, self.epochs, self.initial_drop_percent)
        at = alpha_t(epoch, self.epochs, self.alpha_0)
        zero = (pred_u.sum() * 0.0).float()
        if epoch < self.sup_only_epochs:
            return U2PLOutput(sup + zero, sup, zero, zero, percent, at)
        entropy = teacher_entropy(teacher_u, pred_u, "teacher_u", "pred_u", out_size, align_corners)
        with torch.no_grad():
            valid_u = not_ignored(pseudo_u, self.ignore_index)
            # one selection pass for the drop threshold and both contrastive thresholds
            thresholds = entropy_percentile(entropy, valid_u, [percent, at, 100.0 - at])
        unsup = _loss_from_entropy(pred_u, pseudo_u, entropy, thresholds[0], self.ignore_index, out_size, align_corners)
        contra = zero
        if self.bank is not None and rep is not None:
            contra = self._contrastive(
                label_l, pseudo_u, entropy, valid_u, thresholds, rep, rep_teacher, prob_teacher, generator, draws
            )
        total = sup + self.unsupervised_weight * unsup + self.contrastive_weight * contra
        return U2PLOutput(total, sup, unsup, contra, percent, at)

    def _supervised(self, pred_l, label_l, size, align_corners):
        """The labeled loss; with ``size``, our fused losses read the logits upsampled themselves,
        any other module gets them upsampled."""
        if size is None:
            return self.supervised_loss(pred_l, label_l)
        if isinstance(self.supervised_loss, (PseudoLabelCrossEntropy, OhemCrossEntropy)):
            return self.supervised_loss(pred_l, label_l, size=size, align_corners=align_corners)
        pred_l = _checks.logits(pred_l, "pred_l")
        out_size, align_corners = _checks.output_size(size, pred_l, align_corners)
        return self.supervised_loss(interpolate(pred_l, out_size, align_corners), label_l)

    def kept_pixels(self, entropy: torch.Tensor, pseudo_u: torch.Tensor, epoch: int) -> torch.Tensor:
        """(N, H, W) bool: the pixels whose pseudo-label the unsupervised loss of :meth:`forward`
        trains on at ``epoch``, given the teacher's per-pixel ``entropy``: none before
        ``sup_only_epochs``, then the valid pixels under the epoch's entropy percentile of this batch."""
        if epoch < self.sup_only_epochs:
            return torch.zeros(pseudo_u.shape, dtype=torch.bool, device=pseudo_u.device)
        with torch.no_grad():
            valid = not_ignored(pseudo_u, self.ignore_index)
            threshold = entropy_percentile(entropy, valid, drop_percent(epoch, self.epochs, self.initial_drop_percent))
            return reliable_pixels(valid, entropy, threshold)

    def _contrastive(
        self, label_l, pseudo_u, entropy, valid_u, thresholds, rep, rep_teacher, prob_teacher, generator, draws
    ):
        if rep_teacher is None or prob_teacher is None:
            raise ValueError("rep_teacher, prob_teacher: required with rep for the contrastive term")
        b_l = label_l.shape[0]
        with torch.no_grad():
            low_u = (entropy <= thresholds[1]) & valid_u
            high_u = (entropy >= thresholds[2]) & valid_u
            labeled_valid = not_ignored(label_l, self.ignore_index)
            size = rep.shape[-2:]
            # U2PL downsamples masks and labels with PyTorch's (legacy) nearest rule
            small = lambda t: F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0]
            reliable = small(torch.cat([labeled_valid, low_u])) > 0.5
            unreliable = small(torch.cat([labeled_valid, high_u])) > 0.5
            labels = small(torch.cat([label_l.long(), pseudo_u.long()])).long()
            is_labeled = torch.arange(rep.shape[0], device=rep.device) < b_l
        return u2pl_contrastive_loss(
            rep,
            rep_teacher,
            prob_teacher,
            labels,
            reliable,
            unreliable,
            is_labeled,
            self.bank,
            generator=generator,
            draws=draws,
            **self.contrastive_kwargs,
        )
