"""Supervised training on the labeled images alone: the baseline every method is judged against."""

from __future__ import annotations

import torch

from ...models import model_outputs
from .base import Method, StepContext, StepOutput
from .registry import register


@register
class Supervised(Method):
    name = "supervised"
    description = "labeled images only: cross-entropy, no teacher (the baseline)"
    uses_unlabeled = False
    uses_teacher = False

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        images, labels = labeled
        up = self.upsampling(labels)
        logits = up(model_outputs(ctx.student(images))[0])
        loss = self.supervised_loss(logits, labels, **up.kwargs)
        zero = torch.zeros((), device=loss.device)
        return StepOutput(loss, loss.detach(), zero, zero)
