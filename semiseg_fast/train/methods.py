"""One training step of each method: supervised, fixmatch (UniMatch-style), u2pl, pseudoseg and
selftrain (offline pseudo-labels).

All of them compute their losses with the library's fused ops. Logits are upsampled to the crop
size (bilinear, align_corners=True, as UniMatch and U2PL do) before the losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import U2PLLoss
from ..mixing import mix_pseudo_labels
from ..models import image_labels_from_masks, model_outputs
from ..ops import pixel_stats, pseudo_label_cross_entropy, pseudoseg_consistency_loss


@dataclass
class StepOutput:
    loss: torch.Tensor
    supervised: torch.Tensor
    unsupervised: torch.Tensor
    mask_ratio: torch.Tensor  # fraction of unlabeled pixels that trained the student


@dataclass
class StepContext:
    student: nn.Module  # as called for the gradient step (possibly DDP-wrapped)
    teacher: nn.Module | None  # EMA copy, or the bare student for a shared teacher
    semi: dict[str, Any]
    ignore_index: int
    epoch: int
    generator: torch.Generator
    criterion: U2PLLoss | None = None
    num_classes: int = 0


def _upsampled(output, size):
    """(logits at ``size``, logits as the model gave them, representation or None)."""
    logits, rep = model_outputs(output)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True), logits, rep


def predict(model: nn.Module, images: torch.Tensor):
    return _upsampled(model(images), images.shape[-2:])


def _teacher_outputs(ctx: StepContext, images: torch.Tensor):
    """The teacher's raw outputs, in eval mode and without gradients."""
    with torch.no_grad():
        was_training = ctx.teacher.training
        ctx.teacher.eval()
        out = ctx.teacher(images)
        ctx.teacher.train(was_training)
    return out


def _teacher_predict(ctx: StepContext, images: torch.Tensor):
    return _upsampled(_teacher_outputs(ctx, images), images.shape[-2:])


def _mix(box: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """CutMix within the batch: inside image i's box, take image i - 1 (cyclically)."""
    b = box[:, None] if t.dim() == 4 else box
    return torch.where(b, t.roll(1, dims=0), t)


def _mixed_pseudo_labels(box: torch.Tensor, teacher_logits: torch.Tensor):
    """(label, confidence) of the CutMixed images from one fused pass over the teacher's logits:
    outside the box image i's own, inside it image i - 1's."""
    stats = pixel_stats(teacher_logits)
    label, conf = stats.label, stats.confidence
    return mix_pseudo_labels(label, conf, label.roll(1, dims=0), conf.roll(1, dims=0), ~box)


def supervised_step(ctx: StepContext, labeled, unlabeled) -> StepOutput:
    images, labels = labeled
    logits, _, _ = predict(ctx.student, images)
    loss = pseudo_label_cross_entropy(logits, labels, ignore_index=ctx.ignore_index)
    zero = torch.zeros((), device=loss.device)
    return StepOutput(loss, loss.detach(), zero, zero)


def fixmatch_step(ctx: StepContext, labeled, unlabeled) -> StepOutput:
    images_l, labels_l = labeled
    weak, strong, pad, box = unlabeled
    teacher_logits, _, _ = _teacher_predict(ctx, weak)
    mixed = _mix(box, strong)
    logits, _, _ = predict(ctx.student, torch.cat([images_l, mixed]))
    logits_l, logits_u = logits.split([images_l.shape[0], weak.shape[0]])
    sup = pseudo_label_cross_entropy(logits_l, labels_l, ignore_index=ctx.ignore_index)
    # UniMatch's loss_u_s: CE on confident pixels, over the count of pixels that are not padding
    label, conf = _mixed_pseudo_labels(box, teacher_logits)
    valid = ~_mix(box, pad)
    confident = valid & (conf >= ctx.semi["threshold"])
    target = label.masked_fill(~confident, ctx.ignore_index)
    num_valid = valid.sum()
    unsup = pseudo_label_cross_entropy(logits_u, target, ignore_index=ctx.ignore_index, normalizer=num_valid)
    ratio = confident.sum() / num_valid.clamp(min=1)
    loss = sup + ctx.semi["unsupervised_weight"] * unsup
    return StepOutput(loss, sup.detach(), unsup.detach(), ratio)


def u2pl_step(ctx: StepContext, labeled, unlabeled) -> StepOutput:
    """U2PL's train_semi.py step: pseudo-labels from the teacher on the weak view, CutMix of
    image and pseudo-label, one student pass over labeled + mixed images, the teacher's logits,
    representation and probabilities on the same batch for the entropy filter and the
    contrastive term."""
    images_l, labels_l = labeled
    weak, strong, pad, box = unlabeled
    teacher_weak, _, _ = _teacher_predict(ctx, weak)
    mixed_pad = _mix(box, pad)
    pseudo = _mixed_pseudo_labels(box, teacher_weak)[0].masked_fill(mixed_pad, ctx.ignore_index)
    both = torch.cat([images_l, _mix(box, strong)])
    logits, _, rep = predict(ctx.student, both)
    teacher_all, teacher_small, teacher_rep = _teacher_predict(ctx, both)
    n_l = images_l.shape[0]
    logits_l, logits_u = logits.split([n_l, weak.shape[0]])
    out = ctx.criterion(
        logits_l,
        labels_l,
        logits_u,
        pseudo,
        teacher_all[n_l:],
        ctx.epoch,
        rep=rep,
        rep_teacher=teacher_rep,
        prob_teacher=teacher_small.float().softmax(1),
        generator=ctx.generator,
    )
    kept = torch.tensor(out.drop_percent / 100.0 if ctx.epoch >= ctx.criterion.sup_only_epochs else 0.0)
    return StepOutput(out.total, out.supervised.detach(), out.unsupervised.detach(), kept)


def pseudoseg_step(ctx: StepContext, labeled, unlabeled) -> StepOutput:
    """PseudoSeg's step: the teacher's decoder and SGC logits on the weak view fuse into the target
    of the strong view (colour jitter + Cutout, whose square is ignored); labeled images train the
    decoder and the SGC with cross-entropy and the image classifier with BCE against the classes
    present. One student pass over labeled + strong images."""
    images_l, labels_l = labeled
    weak, strong, pad, box = unlabeled
    t_out = _teacher_outputs(ctx, weak)
    size = weak.shape[-2:]
    up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    n_l, n_u = images_l.shape[0], weak.shape[0]
    image_labels = image_labels_from_masks(labels_l, ctx.num_classes, ctx.ignore_index)
    unknown = torch.full((n_u, image_labels.shape[1]), -1.0, device=image_labels.device)
    cut = strong.masked_fill(box[:, None], 0.0)  # 0 = the dataset mean colour after normalisation
    out = ctx.student(torch.cat([images_l, cut]), torch.cat([image_labels, unknown]))
    pred, sgc = up(out["pred"]), up(out["sgc"])
    pred_l, pred_u = pred.split([n_l, n_u])
    ps = ctx.semi["pseudoseg"]
    sup = (
        pseudo_label_cross_entropy(pred_l, labels_l, ignore_index=ctx.ignore_index)
        + ps["sgc_weight"] * pseudo_label_cross_entropy(sgc[:n_l], labels_l, ignore_index=ctx.ignore_index)
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
    )
    loss = sup + ctx.semi["unsupervised_weight"] * unsup
    return StepOutput(loss, sup.detach(), unsup.detach(), ratio)


def selftrain_step(ctx: StepContext, labeled, pseudo_labeled) -> StepOutput:
    """Self-training's student (Zhu et al. 2020): one pass over human-labeled and pseudo-labeled
    crops; hard cross-entropy on both, or a soft cross-entropy against the stored top-k
    probabilities (renormalised) on the pseudo-labeled part."""
    images_l, labels_l = labeled
    images_p, labels_p, *soft = pseudo_labeled
    logits, _, _ = predict(ctx.student, torch.cat([images_l, images_p]))
    logits_l, logits_p = logits.split([images_l.shape[0], images_p.shape[0]])
    sup = pseudo_label_cross_entropy(logits_l, labels_l, ignore_index=ctx.ignore_index)
    kept = labels_p != ctx.ignore_index
    if soft:
        classes, probs = soft
        target = torch.zeros_like(logits_p, dtype=torch.float32).scatter_(1, classes, probs)
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
        ce = -(target * F.log_softmax(logits_p.float(), dim=1)).sum(dim=1)
        pseudo = torch.where(kept, ce, torch.zeros_like(ce)).sum() / kept.sum().clamp(min=1)
    else:
        pseudo = pseudo_label_cross_entropy(logits_p, labels_p, ignore_index=ctx.ignore_index)
    loss = sup + ctx.semi["unsupervised_weight"] * pseudo
    return StepOutput(loss, sup.detach(), pseudo.detach(), kept.float().mean())


STEPS = {
    "supervised": supervised_step,
    "selftrain": selftrain_step,
    "fixmatch": fixmatch_step,
    "u2pl": u2pl_step,
    "pseudoseg": pseudoseg_step,
}


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, over parameters and float buffers
    (BatchNorm statistics); integer buffers are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.is_floating_point():
            t.lerp_(s, 1.0 - decay)
        else:
            t.copy_(s)
