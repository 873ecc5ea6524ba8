"""A method defined outside the package, as a user would write one: tests/train/test_registry.py
trains it by its import path (method=tests.train.toy_method:MSEConsistency)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semiseg_fast import pseudo_label_cross_entropy
from semiseg_fast.train.data import UnlabeledView
from semiseg_fast.train.methods import Method, StepOutput, register
from semiseg_fast.train.methods.base import predict, teacher_predict
from semiseg_fast.train.schema import NON_NEGATIVE_NUMBER, Section, option


@dataclass
class MSEConsistencyConfig(Section):
    weight: float = option(0.5, "weight of the squared difference of the softmaxes", NON_NEGATIVE_NUMBER)


@register
class MSEConsistency(Method):
    name = "mse_consistency"
    description = "the Pi-model's consistency: squared difference of teacher and student softmaxes"
    config = MSEConsistencyConfig

    def unlabeled_view(self, data):
        semi = self.run_config["semi"]
        return UnlabeledView(data.unlabeled, self.run_config["data"], semi["strong_color"], 0.0)

    def step(self, ctx, labeled, unlabeled):
        images_l, labels_l = labeled
        weak, strong, _pad, _box = unlabeled
        target = teacher_predict(ctx, weak)[0].softmax(1)
        logits, _, _ = predict(ctx.student, torch.cat([images_l, strong]))
        logits_l, logits_u = logits.split([images_l.shape[0], weak.shape[0]])
        sup = pseudo_label_cross_entropy(logits_l, labels_l, ignore_index=ctx.ignore_index)
        unsup = (logits_u.float().softmax(1) - target.float()).pow(2).sum(1).mean()
        loss = sup + self.settings["weight"] * unsup
        return StepOutput(loss, sup.detach(), unsup.detach(), torch.ones(()))
