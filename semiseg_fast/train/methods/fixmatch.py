"""FixMatch as UniMatch trains it: the teacher labels the weak view, the student learns the
confident pixels of a colour-jittered strong view with CutMix."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...models import model_outputs
from ..data import RunData, UnlabeledView
from ..schema import UNIT_INTERVAL, Section, option
from .base import (
    Method,
    StepContext,
    StepOutput,
    confident_cross_entropy,
    mix,
    mixed_pseudo_labels,
    teacher_outputs,
)
from .registry import register


@dataclass
class FixMatchConfig(Section):
    threshold: float = option(0.95, "confidence a pseudo-label needs, in [0, 1]", UNIT_INTERVAL)


@register(default=True)
class FixMatch(Method):
    name = "fixmatch"
    description = "UniMatch-style FixMatch: confident teacher pseudo-labels on a strong view with CutMix"
    config = FixMatchConfig
    renamed = {"semi.threshold": "threshold"}  # where it was before methods had sections of their own

    def unlabeled_view(self, data: RunData) -> UnlabeledView:
        semi = self.run_config["semi"]
        return UnlabeledView(data.unlabeled, self.run_config["data"], semi["strong_color"], semi["cutmix_p"])

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        images_l, labels_l = labeled
        weak, strong, pad, box = unlabeled
        up = self.upsampling(weak)
        teacher_logits = up(model_outputs(teacher_outputs(ctx, weak))[0])
        mixed = mix(box, strong)
        logits = up(model_outputs(ctx.student(torch.cat([images_l, mixed])))[0])
        logits_l, logits_u = logits.split([images_l.shape[0], weak.shape[0]])
        sup = self.supervised_loss(logits_l, labels_l, **up.kwargs)
        label, conf = mixed_pseudo_labels(box, teacher_logits, **up.kwargs)
        unsup, ratio = confident_cross_entropy(
            logits_u, label, conf, mix(box, pad), self.settings["threshold"], ctx.ignore_index, **up.kwargs
        )
        loss = sup + ctx.unsupervised_weight * unsup
        return StepOutput(loss, sup.detach(), unsup.detach(), ratio)

    def confident(self, confidence: torch.Tensor) -> torch.Tensor:
        """The pixels whose pseudo-label trains the student: teacher confidence at the threshold or above."""
        return confidence >= self.settings["threshold"]

    def pseudo_labels(self, teacher, images, indices, epoch):
        stats = self.upsampling(images).stats(model_outputs(teacher(images))[0])
        return stats.label, self.confident(stats.confidence)
