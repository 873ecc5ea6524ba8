"""UniMatch (V1, Yang et al. 2023) as its code trains it: the model labels the weak view in the same
training-mode pass as the labeled images; two strong views, each CutMixed with another image of
the batch, learn the confident pixels; and a second decoder pass over the weak view's features
with whole channels dropped (the feature perturbation) learns them too. No EMA teacher.

The total is UniMatch's (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 without the halving, which
only rescales the learning rate (as FixMatch here leaves out its (L_x + L_u) / 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...models import model_outputs
from ...models.build import BUILT_IN_MODEL
from ...models.deeplab import perturbed_features
from ...ops import pixel_stats
from ..data import RunData, UnlabeledView
from ..schema import NON_NEGATIVE_NUMBER, UNIT_INTERVAL, Fail, Section, number_in, option
from .base import Method, StepContext, StepOutput, confident_cross_entropy, mix
from .registry import register


@dataclass
class UniMatchConfig(Section):
    threshold: float = option(0.95, "confidence a pseudo-label needs, in [0, 1]", UNIT_INTERVAL)
    feature_dropout: float = option(
        0.5,
        "share of the encoder's channels dropped in the perturbed decoder pass, in (0, 1)",
        number_in(0, 1, "a rate in (0, 1)", low_open=True, high_open=True),
    )
    strong_weight: float = option(
        0.5, "weight of the two strong views' losses together (each gets half)", NON_NEGATIVE_NUMBER
    )
    fp_weight: float = option(0.5, "weight of the feature-perturbation loss", NON_NEGATIVE_NUMBER)


@register
class UniMatch(Method):
    name = "unimatch"
    description = "UniMatch: two CutMixed strong views and a feature-perturbed decoder pass, labeled by the model"
    config = UniMatchConfig
    uses_teacher = False  # the model labels its own weak view, in training mode

    @classmethod
    def check_config(cls, config, fail: Fail) -> None:
        if config["model"]["name"] != BUILT_IN_MODEL:
            fail("model.name", f"{BUILT_IN_MODEL} with method=unimatch (its feature perturbation needs the decoder)")

    def unlabeled_view(self, data: RunData) -> UnlabeledView:
        semi = self.run_config["semi"]
        return UnlabeledView(
            data.unlabeled, self.run_config["data"], semi["strong_color"], semi["cutmix_p"], two_strong=True
        )

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        images_l, labels_l = labeled
        weak, strong1, strong2, pad, box1, box2 = unlabeled
        n_l, n_u, up = images_l.shape[0], weak.shape[0], self.upsampling(weak)
        st = self.settings
        with perturbed_features(ctx.student, st["feature_dropout"], n_l, ctx.generator):
            out = ctx.student(torch.cat([images_l, weak]))
        logits_l, logits_w = up(out["pred"]).split([n_l, n_u])
        logits_fp = up(out["pred_fp"])
        # the second view pastes from the image two places back, the first from the one before:
        # two mixing images, as UniMatch draws two
        shifts = (1, 2 if n_u > 2 else 1)
        mixed1, mixed2 = mix(box1, strong1, shifts[0]), mix(box2, strong2, shifts[1])
        logits_s1, logits_s2 = up(model_outputs(ctx.student(torch.cat([mixed1, mixed2])))[0]).split([n_u, n_u])

        sup = self.supervised_loss(logits_l, labels_l, **up.kwargs)
        stats = pixel_stats(logits_w.detach(), **up.kwargs)
        label, conf = stats.label, stats.confidence
        losses, ratios = [], []
        for box, shift, logits_s in ((box1, shifts[0], logits_s1), (box2, shifts[1], logits_s2)):
            mixed_label, mixed_conf, mixed_pad = (mix(box, t, shift) for t in (label, conf, pad))
            loss, ratio = confident_cross_entropy(
                logits_s, mixed_label, mixed_conf, mixed_pad, st["threshold"], ctx.ignore_index, **up.kwargs
            )
            losses.append(loss)
            ratios.append(ratio)
        fp, _ = confident_cross_entropy(logits_fp, label, conf, pad, st["threshold"], ctx.ignore_index, **up.kwargs)
        unsup = st["strong_weight"] * 0.5 * (losses[0] + losses[1]) + st["fp_weight"] * fp
        loss = sup + ctx.unsupervised_weight * unsup
        return StepOutput(loss, sup.detach(), unsup.detach(), 0.5 * (ratios[0] + ratios[1]))

    def pseudo_labels(self, teacher, images, indices, epoch):
        stats = self.upsampling(images).stats(model_outputs(teacher(images))[0])
        return stats.label, stats.confidence >= self.settings["threshold"]
