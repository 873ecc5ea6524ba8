"""U2PL (Wang et al. 2022) as its train_semi.py steps: entropy-filtered pseudo-labels of the weak
view, CutMix of image and pseudo-label, and the contrastive term whose negatives come from the
unreliable pixels' least likely classes, through a per-class memory bank."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...losses import U2PLLoss
from ...models import model_outputs
from ..data import RunData, UnlabeledView
from ..schema import (
    BOOLEAN,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    Fail,
    Section,
    number_in,
    option,
)
from .base import (
    Method,
    StepContext,
    StepOutput,
    mix,
    mixed_pseudo_labels,
    teacher_outputs,
)
from .registry import register


@dataclass
class U2PLConfig(Section):
    drop_percent: float = option(
        80.0,
        "initial entropy percentile above which pseudo-labels are dropped, in [0, 100]",
        number_in(0, 100, "a percentage in [0, 100]"),
    )
    contrastive: bool = option(True, "train the contrastive term", BOOLEAN)
    contrastive_weight: float = option(0.1, "weight of the contrastive term", NON_NEGATIVE_NUMBER)
    sup_only_epochs: int = option(1, "epochs of labeled-only training before the unsupervised terms", NON_NEGATIVE_INT)
    low_rank: int = option(3, "negatives of an unreliable pixel: classes ranked from low_rank ...", POSITIVE_INT)
    high_rank: int = option(7, "... up to high_rank (exclusive; > low_rank)", POSITIVE_INT)
    num_queries: int = option(64, "anchor pixels per class in the contrastive term", POSITIVE_INT)
    num_negatives: int = option(32, "negatives per anchor", POSITIVE_INT)
    bank_capacity: int = option(4096, "features kept per class in the memory bank", POSITIVE_INT)

    @classmethod
    def check(cls, values, config, fail: Fail) -> None:
        if values["high_rank"] <= values["low_rank"]:
            fail("semi.u2pl.high_rank", f"an integer > semi.u2pl.low_rank={values['low_rank']}")


@register
class U2PL(Method):
    name = "u2pl"
    description = "U2PL: entropy-filtered pseudo-labels, unreliable pixels as contrastive negatives"
    config = U2PLConfig

    @classmethod
    def check_config(cls, config, fail: Fail) -> None:
        if config["train"]["steps"] is not None:
            fail("train.steps", "null with method=u2pl (its drop-percent schedule counts train.epochs)")

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        u, semi = self.settings, config["semi"]
        self.criterion = U2PLLoss(
            num_classes,
            config["train"]["epochs"],
            rep_dim=(config["model"]["kwargs"] or {}).get("rep_dim", 64),
            ignore_index=config["data"]["ignore_index"],
            drop_percent=u["drop_percent"],
            unsupervised_weight=semi["unsupervised_weight"],
            contrastive=u["contrastive"],
            contrastive_weight=u["contrastive_weight"],
            low_rank=u["low_rank"],
            high_rank=u["high_rank"],
            num_queries=u["num_queries"],
            num_negatives=u["num_negatives"],
            bank_capacity=u["bank_capacity"],
            first_class_capacity=u["bank_capacity"],
            sup_only_epochs=u["sup_only_epochs"],
            supervised_loss=self.supervised_loss,
        )

    @classmethod
    def model_kwargs(cls, config, kwargs):
        return dict(kwargs)  # the representation head feeds the contrastive term

    def state(self) -> U2PLLoss:
        return self.criterion

    def unlabeled_view(self, data: RunData) -> UnlabeledView:
        semi = self.run_config["semi"]
        return UnlabeledView(data.unlabeled, self.run_config["data"], semi["strong_color"], semi["cutmix_p"])

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        """Pseudo-labels from the teacher on the weak view, CutMix of image and pseudo-label, one
        student pass over labeled + mixed images, the teacher's logits, representation and
        probabilities on the same batch for the entropy filter and the contrastive term."""
        images_l, labels_l = labeled
        weak, strong, pad, box = unlabeled
        up = self.upsampling(weak)
        teacher_weak = up(model_outputs(teacher_outputs(ctx, weak))[0])
        mixed_pad = mix(box, pad)
        pseudo = mixed_pseudo_labels(box, teacher_weak, **up.kwargs)[0].masked_fill(mixed_pad, ctx.ignore_index)
        both = torch.cat([images_l, mix(box, strong)])
        logits, rep = model_outputs(ctx.student(both))
        logits = up(logits)
        n_l = images_l.shape[0]
        teacher_small, teacher_rep = model_outputs(teacher_outputs(ctx, both))
        # the teacher's statistics on the mixed images: only its unlabeled half is read (at the labels' size)
        teacher_u = up.stats(teacher_small[n_l:])
        logits_l, logits_u = logits.split([n_l, weak.shape[0]])
        self.criterion.unsupervised_weight = ctx.unsupervised_weight  # the ramp-up's value at this step
        out = self.criterion(
            logits_l,
            labels_l,
            logits_u,
            pseudo,
            teacher_u,
            ctx.epoch,
            rep=rep,
            rep_teacher=teacher_rep,
            prob_teacher=teacher_small.float().softmax(1),
            generator=ctx.generator,
            **up.kwargs,
        )
        kept = torch.tensor(out.drop_percent / 100.0 if ctx.epoch >= self.criterion.sup_only_epochs else 0.0)
        return StepOutput(out.total, out.supervised.detach(), out.unsupervised.detach(), kept)

    def pseudo_labels(self, teacher, images, indices, epoch):
        """The argmax of the teacher, kept where the criterion's entropy filter keeps it at ``epoch``:
        the percentile is taken over this batch, as over a training batch."""
        stats = self.upsampling(images).stats(model_outputs(teacher(images))[0])
        return stats.label, self.criterion.kept_pixels(stats.entropy, stats.label, epoch)
