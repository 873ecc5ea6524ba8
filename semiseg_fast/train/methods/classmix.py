"""ClassMix as DACS trains it, and as Hoyer et al.'s code trains its mixes: an EMA teacher labels
weakly augmented unlabeled crops, which the step's labeled crops may join with their ground truth
(``mix_labeled``); each crop is mixed with the next crop of the batch (the last with the first)
by a mask, here half of the classes the teacher sees in it pasted over the next crop; the mixes
are colour-jittered and blurred; the student learns the teacher's labels of each mix, taken per
pixel from its two sources' one-pass statistics (never from a mixed softmax). The unsupervised
loss is weighted by the share of the mixes' pixels the teacher is confident of (max probability
at least 0.968), a scalar computed on the device. DepthMix (``depthmix.py``) differs in its mask
and an optional depth task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...data.transforms import jitter_and_blur
from ...mixing import classmix_masks, mix_images, mix_pseudo_labels
from ...models import model_outputs
from ...ops import pseudo_label_cross_entropy
from ..data import RunData, WeakView
from ..schema import BOOLEAN, UNIT_INTERVAL, Fail, Section, option
from .base import Method, StepContext, StepOutput, teacher_outputs
from .registry import register


@dataclass
class ClassMixConfig(Section):
    confidence: float = option(
        0.968,
        "teacher confidence that counts a pixel as confident: the unsupervised loss is weighted by the share of "
        "the mixes' pixels at or above it (DACS), in [0, 1]",
        UNIT_INTERVAL,
    )
    mix_labeled: bool = option(
        False,
        "the step's labeled crops join the mixing with their ground truth as labels (confidence 1), as Hoyer "
        "et al.'s code mixes them; the student then learns data.unlabeled_batch_size + data.batch_size mixes",
        BOOLEAN,
    )


@register
class ClassMix(Method):
    name = "classmix"
    description = "DACS mean teacher: crops mixed by half their predicted classes, loss weighted by confidence"
    config = ClassMixConfig

    @classmethod
    def check_config(cls, config: dict[str, Any], fail: Fail) -> None:
        if config["data"]["unlabeled_batch_size"] < 2 and not config["semi"][cls.name]["mix_labeled"]:
            fail("data.unlabeled_batch_size", f"at least 2 (mixing pairs crops), or semi.{cls.name}.mix_labeled=true")

    def unlabeled_view(self, data: RunData) -> WeakView:
        return WeakView(data.unlabeled, self.run_config["data"])

    def mix_masks(
        self, ctx: StepContext, images: torch.Tensor, labels: torch.Tensor, pad: torch.Tensor, *maps: torch.Tensor
    ) -> torch.Tensor:
        """bool (N, H, W), True where the mix of crop i and crop i + 1 takes crop i. ``labels``:
        the teacher's (or the ground truth), ``ignore_index`` on padding; ``pad`` True on padding;
        ``maps``: what the unlabeled view gives after the padding masks."""
        return classmix_masks(labels, ctx.host_rng, ctx.ignore_index)

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        images_l, labels_l, *maps_l = labeled
        weak, pad, *maps = unlabeled
        up = self.upsampling(weak)
        stats = up.stats(model_outputs(teacher_outputs(ctx, weak))[0])
        images, label = weak, stats.label.masked_fill(pad, ctx.ignore_index)
        conf = stats.confidence.masked_fill(pad, 0.0)
        if self.settings["mix_labeled"]:
            ignored = labels_l == ctx.ignore_index
            images = torch.cat([weak, images_l])
            label = torch.cat([label, labels_l.to(label.dtype)])
            conf = torch.cat([conf, (~ignored).to(conf.dtype)])
            pad = torch.cat([pad, ignored])
            maps = [torch.cat(pair) for pair in zip(maps, maps_l)]

        mask = self.mix_masks(ctx, images, label, pad, *maps)
        following = lambda t: t.roll(-1, dims=0)  # noqa: E731  crop i is mixed with crop i + 1
        mixed = mix_images(images, following(images), mask)
        mixed_label, mixed_conf = mix_pseudo_labels(label, conf, following(label), following(conf), mask)
        valid = ~torch.where(mask, pad, following(pad))
        if self.run_config["semi"]["strong_color"]:
            mixed = jitter_and_blur(mixed, ctx.host_rng)

        output = ctx.student(torch.cat([images_l, mixed]))
        logits = up(model_outputs(output)[0])
        logits_l, logits_u = logits.split([images_l.shape[0], mixed.shape[0]])
        sup = self.supervised_loss(logits_l, labels_l, **up.kwargs)
        num_valid = valid.sum()
        weight = (valid & (mixed_conf >= self.settings["confidence"])).sum() / num_valid.clamp(min=1)
        target = mixed_label.masked_fill(~valid, ctx.ignore_index)
        unsup = weight * pseudo_label_cross_entropy(
            logits_u, target, ignore_index=ctx.ignore_index, normalizer=num_valid, **up.kwargs
        )
        loss = sup + ctx.unsupervised_weight * unsup
        depth = self.depth_task(ctx, output, images_l, labels_l, mask, valid)
        if depth is not None:
            loss = loss + depth
        return StepOutput(loss, sup.detach(), unsup.detach(), weight)

    def depth_task(
        self, ctx: StepContext, output, images_l: torch.Tensor, labels_l: torch.Tensor, mask, valid
    ) -> torch.Tensor | None:
        """A weighted loss of the student's ``output`` on its labeled crops and mixes beside
        segmentation, or None (ClassMix has none; DepthMix's depth task)."""
        return None

    def pseudo_labels(self, teacher, images, indices, epoch):
        label = self.upsampling(images).stats(model_outputs(teacher(images))[0]).label
        return label, torch.ones_like(label, dtype=torch.bool)  # every pixel trains; confidence only weighs the loss
