"""Self-training's student (Zhu et al. 2020): human-labeled and offline pseudo-labeled crops in one
pass; the pseudo-labels come from ``python -m semiseg_fast.pseudo_label`` run on a teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data import DataError
from ...models import model_outputs
from ...ops import pseudo_label_cross_entropy
from ..data import PseudoLabeledView, RunData
from ..schema import BOOLEAN, OPTIONAL_FOLDER, UNIT_INTERVAL, Fail, Section, option
from .base import Method, StepContext, StepOutput, mix, resized
from .registry import register


@dataclass
class SelfTrainConfig(Section):
    pseudo_dir: str | None = option(
        None,
        "folder written by python -m semiseg_fast.pseudo_label (selftrain needs it; --pseudo-dir); the "
        "human:pseudo mix is data.batch_size:data.unlabeled_batch_size",
        OPTIONAL_FOLDER,
        path=True,
    )
    threshold: float = option(0.0, "pseudo-labels under this confidence are ignored, in [0, 1]", UNIT_INTERVAL)
    soft: bool = option(
        False, "soft cross-entropy against the stored top-k probabilities (pseudo_label --topk)", BOOLEAN
    )
    class_balanced: bool = option(
        False, "centre each crop on a pixel of a class drawn uniformly from those in the image", BOOLEAN
    )
    strong: bool = option(
        False,
        "the student's pseudo-labeled crops get the strong view (semi.strong_color's colour jitter and blur, "
        "CutMix with another pseudo-labeled crop and its labels at semi.cutmix_p)",
        BOOLEAN,
    )


@register
class SelfTrain(Method):
    name = "selftrain"
    description = "self-training on offline pseudo-labels of a teacher (Zhu et al. 2020; needs --pseudo-dir)"
    config = SelfTrainConfig
    uses_teacher = False  # the teacher ran offline: its labels are files

    @classmethod
    def check_config(cls, config, fail: Fail) -> None:
        pseudo_dir = config["semi"]["selftrain"]["pseudo_dir"]
        if not (isinstance(pseudo_dir, str) and pseudo_dir):
            fail("semi.selftrain.pseudo_dir", "a folder written by python -m semiseg_fast.pseudo_label (--pseudo-dir)")

    def unlabeled_view(self, data: RunData) -> PseudoLabeledView:
        st = self.settings
        self.view = PseudoLabeledView(
            data.unlabeled,
            st["pseudo_dir"],
            self.run_config["data"],
            float(st["threshold"]),
            st["soft"],
            st["class_balanced"],
            num_classes=data.num_classes,
            strong=(self.run_config["semi"]["strong_color"], self.run_config["semi"]["cutmix_p"])
            if st["strong"]
            else None,
        )
        return self.view

    def step(self, ctx: StepContext, labeled, pseudo_labeled) -> StepOutput:
        """Hard cross-entropy on both parts, or a soft cross-entropy against the stored top-k
        probabilities (renormalised) on the pseudo-labeled part. The soft one is plain PyTorch on
        logits upsampled first, whatever train.fused_upsample says (no fused op takes a soft target)."""
        images_l, labels_l = labeled
        images_p, labels_p, *soft = pseudo_labeled
        if self.settings["strong"]:  # CutMix: inside the box, the previous crop and its labels
            *soft, box = soft
            images_p, labels_p, *soft = (mix(box, t) for t in (images_p, labels_p, *soft))
        up = self.upsampling(labels_l)
        logits = up(model_outputs(ctx.student(torch.cat([images_l, images_p])))[0])
        logits_l, logits_p = logits.split([images_l.shape[0], images_p.shape[0]])
        sup = self.supervised_loss(logits_l, labels_l, **up.kwargs)
        kept = labels_p != ctx.ignore_index
        if soft:
            classes, probs = soft
            if up.fused:
                logits_p = resized(logits_p, up.size)
            target = torch.zeros_like(logits_p, dtype=torch.float32).scatter_(1, classes, probs)
            target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
            ce = -(target * F.log_softmax(logits_p.float(), dim=1)).sum(dim=1)
            pseudo = torch.where(kept, ce, torch.zeros_like(ce)).sum() / kept.sum().clamp(min=1)
        else:
            pseudo = pseudo_label_cross_entropy(logits_p, labels_p, ignore_index=ctx.ignore_index, **up.kwargs)
        loss = sup + ctx.unsupervised_weight * pseudo
        return StepOutput(loss, sup.detach(), pseudo.detach(), kept.float().mean())

    def pseudo_labels(self, teacher, images, indices, epoch):
        """The stored pseudo-labels (the teacher ran offline), kept where semi.selftrain.threshold
        keeps them; an image without a stored label has none (ignore_index) and keeps nothing."""
        ignore, size = self.run_config["data"]["ignore_index"], tuple(images.shape[-2:])
        labels, kept = [], []
        for i in indices:
            if i in self.view.labels.ids:
                label, confidence, _ = self.view.labels.load(i)
                if tuple(label.shape) != size:
                    raise DataError(
                        f"pseudo_dir: {self.view.pseudo_dir!r} has a {tuple(label.shape)} label for image "
                        f"{self.view.labels.ids[i]!r}, which is {size} in this run"
                    )
                labels.append(label)
                kept.append(self.view.thresholded(label, confidence) != ignore)
            else:
                labels.append(torch.full(size, ignore, dtype=torch.uint8))
                kept.append(torch.zeros(size, dtype=torch.bool))
        return torch.stack(labels).to(images.device), torch.stack(kept).to(images.device)
