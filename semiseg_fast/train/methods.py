"""One training step of each method: supervised, fixmatch (UniMatch-style) and u2pl.

All three compute their losses with the library's fused ops. Logits are upsampled to the crop
size (bilinear, align_corners=True, as UniMatch and U2PL do) before the losses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import U2PLLoss
from ..models import model_outputs
from ..ops import fixmatch_loss, pseudo_label_cross_entropy


@dataclass
class StepOutput:
    loss: torch.Tensor
    supervised: torch.Tensor
    unsupervised: torch.Tensor
    mask_ratio: torch.Tensor  # fraction of unlabeled pixels that trained the student


@dataclass
class StepContext:
    student: nn.Module              # as called for the gradient step (possibly DDP-wrapped)
    teacher: Optional[nn.Module]    # EMA copy, or the bare student for a shared teacher
    semi: Dict[str, Any]
    ignore_index: int
    epoch: int
    generator: torch.Generator
    criterion: Optional[U2PLLoss] = None


def predict(model: nn.Module, images: torch.Tensor):
    logits, rep = model_outputs(model(images))
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True), logits, rep


def _teacher_predict(ctx: StepContext, images: torch.Tensor):
    with torch.no_grad():
        was_training = ctx.teacher.training
        ctx.teacher.eval()
        out = predict(ctx.teacher, images)
        ctx.teacher.train(was_training)
    return out


def _mix(box: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """CutMix within the batch: inside image i's box, take image i - 1 (cyclically)."""
    b = box[:, None] if t.dim() == 4 else box
    return torch.where(b, t.roll(1, dims=0), t)


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
    unsup, ratio = fixmatch_loss(logits_u, _mix(box, teacher_logits), ctx.semi["threshold"],
                                 ignore_mask=_mix(box, pad), return_mask_ratio=True)
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
    pseudo = teacher_weak.argmax(1).to(torch.uint8)
    mixed_pad = _mix(box, pad)
    pseudo = _mix(box, pseudo).masked_fill(mixed_pad, ctx.ignore_index)
    both = torch.cat([images_l, _mix(box, strong)])
    logits, _, rep = predict(ctx.student, both)
    teacher_all, teacher_small, teacher_rep = _teacher_predict(ctx, both)
    n_l = images_l.shape[0]
    logits_l, logits_u = logits.split([n_l, weak.shape[0]])
    out = ctx.criterion(logits_l, labels_l, logits_u, pseudo, teacher_all[n_l:], ctx.epoch, rep=rep,
                        rep_teacher=teacher_rep, prob_teacher=teacher_small.float().softmax(1),
                        generator=ctx.generator)
    kept = torch.tensor(out.drop_percent / 100.0 if ctx.epoch >= ctx.criterion.sup_only_epochs else 0.0)
    return StepOutput(out.total, out.supervised.detach(), out.unsupervised.detach(), kept)


STEPS = {"supervised": supervised_step, "fixmatch": fixmatch_step, "u2pl": u2pl_step}


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
