"""U2PL's official loss functions and memory bank, transcribed from the specification in the
project's research notes (u2pl.md): per-class Python loops, boolean indexing, NumPy on the host,
a list-of-tensors memory bank. The slow baseline of the benchmarks and the ground truth the
fused versions are tested against. Random draws come from caller-supplied indices, so that a
fused implementation can be compared draw for draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def official_entropy(logits: torch.Tensor) -> torch.Tensor:
    prob = torch.softmax(logits.float(), dim=1)
    return -torch.sum(prob * torch.log(prob + 1e-10), dim=1)


def unsupervised_loss(
    predict: torch.Tensor,
    target: torch.Tensor,
    percent: float,
    pred_teacher: torch.Tensor,
    entropy: torch.Tensor | None = None,
) -> torch.Tensor:
    """compute_unsupervised_loss: drop the valid pixels whose teacher entropy is at or above the
    ``percent``-th percentile, then ``B*H*W / kept`` times the mean CE over the kept pixels.
    ``entropy`` replaces the official entropy formula when given (to compare at equal entropies)."""
    batch_size, _, h, w = predict.shape
    target = target.long().clone()
    with torch.no_grad():
        ent = official_entropy(pred_teacher) if entropy is None else entropy
        thresh = np.percentile(ent[target != 255].detach().cpu().numpy().flatten().astype(np.float64), percent)
        thresh_mask = ent.ge(torch.tensor(thresh, dtype=torch.float32, device=ent.device)) & (target != 255)
        target[thresh_mask] = 255
        weight = batch_size * h * w / torch.sum(target != 255)
    return weight * F.cross_entropy(predict.float(), target, ignore_index=255)


class MemoryBank:
    """memobank[c]: a tensor of keys, oldest first; enqueue appends and keeps the newest capacity rows."""

    def __init__(self, num_classes: int, dim: int, capacities: Sequence[int]):
        self.queues = [torch.zeros(0, dim) for _ in range(num_classes)]
        self.capacities = list(capacities)

    def enqueue(self, c: int, keys: torch.Tensor) -> None:
        q = torch.cat([self.queues[c], keys.detach().float().cpu()], dim=0)
        self.queues[c] = q[-self.capacities[c] :] if q.shape[0] > self.capacities[c] else q


def contrastive_loss(
    rep,
    rep_teacher,
    prob,
    label,
    reliable,
    unreliable,
    is_labeled,
    memobank: MemoryBank,
    anchor_indices: dict,
    negative_indices: dict,
    low_rank=3,
    high_rank=20,
    current_class_threshold=0.3,
    current_class_negative_threshold=1.0,
    temperature=0.5,
    num_queries=256,
    num_negatives=50,
    official_quirks=False,
):
    """compute_contra_memobank_loss on feature-resolution inputs.

    rep, rep_teacher: (B, D, h, w); prob: (B, C, h, w) teacher probabilities; label: (B, h, w)
    with 255 = ignore (ground truth for labeled images, pseudo-labels for the rest); reliable /
    unreliable: (B, h, w) bool (low / high entropy; every valid labeled pixel is both);
    is_labeled: (B,) bool. anchor_indices[k] / negative_indices[k]: the draws of the k-th valid
    class (k in ascending class order); reduced modulo the number of candidates, so any integers
    will do (the official torch.randint(n) draws are already below n).
    """
    num_classes = prob.shape[1]
    rep = rep.permute(0, 2, 3, 1)
    rep_teacher = rep_teacher.permute(0, 2, 3, 1)
    prob = prob.permute(0, 2, 3, 1)
    onehot = F.one_hot(torch.where(label == 255, num_classes, label.long()), num_classes + 1)[..., :num_classes]
    low_valid = onehot * reliable[..., None]
    high_valid = onehot * unreliable[..., None]
    order = torch.sort(prob, dim=-1, descending=True, stable=True).indices
    labeled = is_labeled[:, None, None].expand_as(label)

    valid_classes, anchors, prototypes = [], [], []
    for i in range(num_classes):
        low_valid_i = low_valid[..., i].bool()
        prob_i = prob[..., i]
        anchors.append(rep[low_valid_i & (prob_i > current_class_threshold)])
        prototypes.append(torch.mean(rep_teacher[low_valid_i].detach(), dim=0, keepdim=True))
        in_top = (order[..., :low_rank] == i).any(-1)
        in_window = (order[..., low_rank:high_rank] == i).any(-1)
        if official_quirks:
            # the labeled term requires label != i while high_valid requires label == i: never true
            candidates = high_valid[..., i].bool() & torch.where(labeled, in_top & (onehot[..., i] == 0), in_window)
        else:
            candidates = unreliable & (label != 255) & torch.where(labeled, in_top & (onehot[..., i] == 0), in_window)
        negative = candidates & (prob_i < current_class_negative_threshold)
        memobank.enqueue(i, rep_teacher[negative].detach())
        if low_valid_i.sum() > 0:
            valid_classes.append(i)

    valid_seg = len(valid_classes)
    if valid_seg <= 1:
        return rep.sum() * 0.0
    loss = rep.sum() * 0.0
    for k in range(valid_seg):
        anchor_class = k if official_quirks else valid_classes[k]  # official: issue #111
        queue = memobank.queues[valid_classes[k]]
        if len(anchors[anchor_class]) == 0 or len(queue) == 0:
            loss = loss + 0 * rep.sum()
            continue
        q = anchors[anchor_class][anchor_indices[k] % len(anchors[anchor_class])]
        negs = queue.to(rep.device)[negative_indices[k] % len(queue)].reshape(num_queries, num_negatives, -1)
        proto = prototypes[anchor_class].unsqueeze(0).repeat(num_queries, 1, 1)
        keys = torch.cat([proto, negs], dim=1)
        logits = torch.cosine_similarity(q.unsqueeze(1), keys, dim=2)
        loss = loss + F.cross_entropy(
            logits / temperature, torch.zeros(num_queries, dtype=torch.long, device=logits.device)
        )
    return loss / valid_seg
