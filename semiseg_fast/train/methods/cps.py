"""CPS (cross pseudo-supervision), as its code trains it with CutMix: two networks of one
architecture, differently initialised, each learning from the other's pseudo-labels on CutMixed
unlabeled images, both from the labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...mixing import cps_box_masks
from ...models import model_outputs
from ...ops import cps_loss
from ..data import LabeledView, RunData
from ..schema import UNIT_INTERVAL, Section, option
from .base import Method, StepContext, StepOutput, Upsampling, mix, mixed_pseudo_labels
from .registry import register


@dataclass
class CPSConfig(Section):
    threshold: float = option(
        0.0, "peer confidence a pseudo-label needs, in [0, 1]; 0 (CPS) trains on every pixel", UNIT_INTERVAL
    )


@dataclass
class CPSPass:
    """What a CPS step computes, for methods that build on it (RRN)."""

    supervised: torch.Tensor  # both networks' supervised losses, summed
    cps: torch.Tensor  # the cross pseudo-supervision loss
    mask_ratio: torch.Tensor
    mixed: torch.Tensor  # the CutMixed unlabeled images
    ignored: torch.Tensor  # their padding (True = ignore)
    logits: list[torch.Tensor]  # each network's logits on them, as the losses take them (Upsampling)
    up: Upsampling


class CPSView(LabeledView):
    """Weakly augmented unlabeled crops, their padding masks (True = ignore) and CPS's box masks
    (three in-bounds boxes, XOR; True inside: the pixels that come from the batch's previous image)."""

    def __getitem__(self, item: tuple[int, ...]):
        weak, pad, g = self._weak(item, keep_label=False)
        box = cps_box_masks(1, weak.shape[1], weak.shape[2], g)[0]
        return weak, pad == self.cfg["ignore_index"], box


@register
class CPS(Method):
    name = "cps"
    description = "CPS: two networks, each trained on the other's pseudo-labels of CutMixed images"
    config = CPSConfig
    uses_teacher = False
    networks = 2

    def unlabeled_view(self, data: RunData) -> CPSView:
        return CPSView(data.unlabeled, self.run_config["data"])

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        p = self.cps_pass(ctx, labeled, unlabeled)
        loss = p.supervised + ctx.unsupervised_weight * p.cps
        return StepOutput(loss, p.supervised.detach(), p.cps.detach(), p.mask_ratio)

    def pseudo_labels(self, teacher, images, indices, epoch):
        """Network 1's argmax, kept where its confidence reaches the threshold (every pixel at 0)."""
        stats = self.upsampling(images).stats(model_outputs(teacher(images))[0])
        return stats.label, stats.confidence >= self.settings["threshold"]

    def cps_pass(self, ctx: StepContext, labeled, unlabeled) -> CPSPass:
        images_l, labels_l = labeled
        images_u, pad, box = unlabeled
        networks = (ctx.student, ctx.peer)
        up = self.upsampling(images_u)
        # Each network's pseudo-labels for the mixed images, mixed from its passes on the two sources
        # (in training mode, without gradients, as CPS's code makes them).
        with torch.no_grad():
            targets = [mixed_pseudo_labels(box, up(model_outputs(net(images_u))[0]), **up.kwargs) for net in networks]
        mixed, ignored = mix(box, images_u), mix(box, pad)
        sup, logits_u = 0.0, []
        for net in networks:
            logits = model_outputs(net(torch.cat([images_l, mixed])))[0]
            logits_l, mixed_logits = logits.split([images_l.shape[0], mixed.shape[0]])
            sup = sup + self.supervised_loss(up(logits_l), labels_l, **up.kwargs)
            logits_u.append(up(mixed_logits))
        unsup, ratio = cps_loss(
            *logits_u,
            ignore_mask=ignored,
            threshold=self.settings["threshold"],
            ignore_index=ctx.ignore_index,
            targets_a=targets[0],
            targets_b=targets[1],
            return_mask_ratio=True,
            **up.kwargs,
        )
        return CPSPass(sup, unsup, ratio, mixed, ignored, logits_u, up)
