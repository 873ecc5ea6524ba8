"""PseudoSeg (Zou et al. 2021): the teacher's decoder and self-attention Grad-CAM (SGC) logits on
the weak view fuse into the soft target of a strong view with colour jitter and a Cutout square
that the loss ignores. The model gains PseudoSeg's image classifier, Grad-CAM and SGC head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...models import image_labels_from_masks
from ...ops import calibrated_fusion, pseudoseg_consistency_loss
from ..data import RunData, UnlabeledView
from ..schema import BOOLEAN, NON_NEGATIVE_NUMBER, POSITIVE_NUMBER, UNIT_INTERVAL, Section, option
from .base import Method, StepContext, StepOutput, teacher_outputs
from .registry import register

TABLES = "docs/experiments.md"


@dataclass
class PseudoSegConfig(Section):
    gamma: float = option(
        0.75,
        "the decoder's share of the fused target, in [0, 1] (PseudoSeg: 0.5; a classifier learned from few labels "
        f"makes the SGC half weak: {TABLES}#pseudosegs-fusion-weight-semipseudoseggamma)",
        UNIT_INTERVAL,
    )
    temperature: float = option(0.5, "sharpening temperature of the fused target (> 0)", POSITIVE_NUMBER)
    threshold: float = option(
        0.0, "drop pixels whose fused target's maximum is under this, in [0, 1] (0: keep all)", UNIT_INTERVAL
    )
    soft: bool = option(True, "soft cross-entropy against the fused target (false: hard, against its argmax)", BOOLEAN)
    cutout_size: float = option(
        0.2,
        "side of the Cutout square on the strong view, as a fraction of the crop; ignored by the loss",
        UNIT_INTERVAL,
    )
    sgc_weight: float = option(1.0, "weight of the SGC head's cross-entropy on labeled images", NON_NEGATIVE_NUMBER)
    classifier_weight: float = option(
        1.0, "weight of the image classifier's BCE on labeled images", NON_NEGATIVE_NUMBER
    )
    classifier_backprop: bool = option(
        False,
        "let the classifier's BCE train the backbone (PseudoSeg's code: yes, on a pretrained backbone; from scratch "
        f"it costs accuracy here: {TABLES}#pseudosegs-classifier-semipseudosegclassifier_backprop)",
        BOOLEAN,
    )


@register
class PseudoSeg(Method):
    name = "pseudoseg"
    description = "PseudoSeg: calibrated fusion of decoder and SGC logits as the target of a strong view"
    config = PseudoSegConfig

    @classmethod
    def model_kwargs(cls, config, kwargs):
        backprop = config["semi"][cls.name]["classifier_backprop"]
        return dict(kwargs, rep_dim=None, pseudoseg=True, pseudoseg_classifier_backprop=backprop)

    def unlabeled_view(self, data: RunData) -> UnlabeledView:
        semi = self.run_config["semi"]
        return UnlabeledView(
            data.unlabeled,
            self.run_config["data"],
            semi["strong_color"],
            semi["cutmix_p"],
            self.settings["cutout_size"],
        )

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        """Labeled images train the decoder and the SGC with cross-entropy and the image classifier
        with BCE against the classes present; one student pass over labeled + strong images."""
        images_l, labels_l = labeled
        weak, strong, pad, box = unlabeled
        t_out = teacher_outputs(ctx, weak)
        up = self.upsampling(weak)
        n_l, n_u = images_l.shape[0], weak.shape[0]
        image_labels = image_labels_from_masks(labels_l, ctx.num_classes, ctx.ignore_index)
        unknown = torch.full((n_u, image_labels.shape[1]), -1.0, device=image_labels.device)
        cut = strong.masked_fill(box[:, None], 0.0)  # 0 = the dataset mean colour after normalisation
        out = ctx.student(torch.cat([images_l, cut]), torch.cat([image_labels, unknown]))
        pred, sgc = up(out["pred"]), up(out["sgc"])
        pred_l, pred_u = pred.split([n_l, n_u])
        ps = self.settings
        sup = (
            self.supervised_loss(pred_l, labels_l, **up.kwargs)
            + ps["sgc_weight"] * self.supervised_loss(sgc[:n_l], labels_l, **up.kwargs)
            + ps["classifier_weight"] * F.binary_cross_entropy_with_logits(out["cls"][:n_l].float(), image_labels)
        )
        unsup, ratio = pseudoseg_consistency_loss(
            pred_u,
            up(t_out["pred"]),
            up(t_out["sgc"]),
            valid=~(box | pad),
            threshold=ps["threshold"],
            soft=ps["soft"],
            gamma=ps["gamma"],
            temperature=ps["temperature"],
            return_mask_ratio=True,
            **up.kwargs,
        )
        loss = sup + ctx.unsupervised_weight * unsup
        return StepOutput(loss, sup.detach(), unsup.detach(), ratio)

    def pseudo_labels(self, teacher, images, indices, epoch):
        """The argmax of the calibrated fusion the loss targets, kept where its maximum reaches
        semi.pseudoseg.threshold (every pixel at 0), as the loss keeps pixels."""
        out, up = teacher(images), self.upsampling(images)
        ps = self.settings
        fused = calibrated_fusion(up(out["pred"]), up(out["sgc"]), ps["gamma"], ps["temperature"], **up.kwargs)
        confidence, label = fused.max(1)
        return label, confidence >= ps["threshold"]
