"""Plain PyTorch versions of the core ops, written the way the research code writes them.

They are the ground truth of the tests, the ``reference`` backend, and the baseline of the
benchmarks. Each one computes in fp32 (fp64 for fp64 inputs), like the official code that
calls ``.float()`` or runs without autocast. They make no host syncs (except
``entropy_percentile``, which is NumPy on the host exactly as in U2PL), so that
``torch.compile(fullgraph=True)`` of them is a fair baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import _checks
from ..base import label_dtype


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def pixel_stats(logits: torch.Tensor, temperature: float = 1.0):
    """Teacher statistics as UniMatch/U2PL compute them: softmax, max, argmax, entropy."""
    x = logits.to(_compute_dtype(logits))
    prob = torch.softmax(x / temperature, dim=1)
    confidence, _ = prob.max(dim=1)
    label = x.argmax(dim=1)
    entropy = -torch.sum(prob * torch.log(prob + 1e-10), dim=1)  # U2PL's formula
    return confidence.float(), label.to(label_dtype(x.shape[1])), entropy.float()


def _mean_denominator(valid, w, normalizer, numel):
    if normalizer == "valid":
        return valid.sum().to(w.dtype if w is not None else torch.float32)
    if normalizer == "weighted":
        return (w * valid).sum() if w is not None else valid.sum().float()
    if normalizer == "total":
        return torch.tensor(float(numel))
    if isinstance(normalizer, torch.Tensor):
        return normalizer
    return torch.tensor(float(normalizer))


def _masked_denominator(normalizer, valid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The denominator of a masked mean (fixmatch, pseudoseg, cps): the ``valid`` pixels, the
    ``"confident"`` ones that ``mask`` keeps, all pixels (``"total"``) or a given number."""
    if normalizer == "valid":
        return valid.sum()
    if normalizer == "confident":
        return mask.sum()
    if normalizer == "total":
        return torch.tensor(float(valid.numel()))
    return torch.tensor(float(normalizer))


def _not_ignored(ignore_mask: torch.Tensor | None, ignore_index: int, like: torch.Tensor) -> torch.Tensor:
    """The pixels an ignore mask keeps (bool: True = ignored; integer: == ignore_index = ignored), or
    all of ``like``'s (an (N, H, W) tensor) without one."""
    if ignore_mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if ignore_mask.dtype == torch.bool:
        return ~ignore_mask
    return _checks.not_ignored(ignore_mask, ignore_index)


def _safe_div(total: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    denom = denom.to(total.device, total.dtype)
    return torch.where(
        denom != 0, total / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(total)
    )


def pseudo_label_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
    normalizer="valid",
):
    """Per-pixel CE with ignore_index, times an optional weight, then reduced."""
    x = logits.to(_compute_dtype(logits))
    t = target.long()
    valid = t != ignore_index
    ce = F.cross_entropy(x, torch.where(valid, t, torch.zeros_like(t)), reduction="none")
    w = weight.to(x.dtype) if weight is not None else None
    loss = torch.where(valid, ce * w if w is not None else ce, torch.zeros_like(ce))
    if reduction == "none":
        return loss.float()
    total = loss.sum()
    if reduction == "sum":
        return total.float()
    return _safe_div(total, _mean_denominator(valid, w, normalizer, t.numel())).float()


def ohem_cross_entropy(logits, target, threshold=0.7, min_kept=100000, ignore_index=255):
    """U2PL's OhemCrossEntropy2dTensor: softmax, the true class's probability p (1 at ignored pixels),
    a full sort for the min_kept-th smallest, the mean CE over valid pixels with p <= max(threshold, it);
    no mining when min_kept reaches the number of valid pixels. Written without host syncs."""
    x = logits.to(_compute_dtype(logits))
    n, c, h, w = x.shape
    t = target.long().reshape(-1)
    valid = t != ignore_index
    t0 = torch.where(valid, t, torch.zeros_like(t))
    prob = torch.softmax(x, dim=1).transpose(0, 1).reshape(c, -1)
    p = prob.gather(0, t0.unsqueeze(0)).squeeze(0).masked_fill(~valid, 1.0)
    limit = torch.tensor(threshold, dtype=p.dtype, device=p.device)
    if 0 < min_kept <= p.numel():
        kth = p.sort().values[min_kept - 1]
        limit = torch.where(kth > limit, kth, limit)  # U2PL: `if mask_prob[index] > thresh`
    keep = torch.where(min_kept >= valid.sum(), valid, valid & (p <= limit))
    ce = F.cross_entropy(x, t0.view(n, h, w), reduction="none").reshape(-1)
    total = torch.where(keep, ce, torch.zeros_like(ce)).sum()
    return _safe_div(total, keep.sum()).float()


def infonce_loss(anchors, positive, keys, rows, weight, temperature=0.5):
    """U2PL's contrastive InfoNCE written out: the negatives gathered into a (K, Q, M, D) tensor,
    every vector normalised as torch.cosine_similarity does, an einsum, cross-entropy to index 0."""
    k, q, _ = anchors.shape
    unit = lambda v: v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-8)
    a, pos, neg = unit(anchors), unit(positive.detach()), unit(keys.detach()[rows])
    pos_logit = (a * pos[:, None, :]).sum(-1, keepdim=True)
    neg_logit = torch.einsum("kqd,kqmd->kqm", a, neg)
    logits = torch.cat([pos_logit, neg_logit], dim=2) / temperature
    ce = F.cross_entropy(
        logits.reshape(k * q, -1), torch.zeros(k * q, dtype=torch.long, device=anchors.device), reduction="none"
    ).reshape(k, q)
    w = weight.detach()[:, None]
    return torch.where(w != 0, ce * w, torch.zeros_like(ce)).sum()


def fixmatch_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    threshold: float = 0.95,
    ignore_mask: torch.Tensor | None = None,
    ignore_index: int = 255,
    normalizer="valid",
    return_mask_ratio: bool = False,
):
    """UniMatch's unlabeled loss: CE against the teacher's argmax where its confidence is at
    least ``threshold`` and the pixel is not ignored, summed over the non-ignored pixels' count."""
    with torch.no_grad():
        prob = teacher_logits.to(_compute_dtype(teacher_logits)).softmax(dim=1)
        conf, pseudo = prob.max(dim=1)
        valid = _not_ignored(ignore_mask, ignore_index, pseudo)
        mask = (conf >= threshold) & valid
    x = student_logits.to(_compute_dtype(student_logits))
    ce = F.cross_entropy(x, pseudo, reduction="none")
    total = torch.where(mask, ce, torch.zeros_like(ce)).sum()
    loss = _safe_div(total, _masked_denominator(normalizer, valid, mask)).float()
    if not return_mask_ratio:
        return loss
    ratio = _safe_div(mask.sum().double(), valid.sum().double()).float()
    return loss, ratio


def cps_loss(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    ignore_mask: torch.Tensor | None = None,
    threshold: float = 0.0,
    ignore_index: int = 255,
    normalizer="valid",
    targets_a: tuple[torch.Tensor, torch.Tensor] | None = None,
    targets_b: tuple[torch.Tensor, torch.Tensor] | None = None,
    return_mask_ratio: bool = False,
):
    """CPS's loss as its code writes it: each network's CE against the other's argmax, plus a
    confidence threshold on the peer (when > 0) and given (label, confidence) targets."""
    with torch.no_grad():
        valid = _not_ignored(ignore_mask, ignore_index, logits_a[:, 0])

        def targets(logits, given):
            if given is not None:
                return given[0].long(), given[1]
            conf, label = logits.to(_compute_dtype(logits)).softmax(dim=1).max(dim=1)
            return label, conf

        pseudo = [targets(logits_a, targets_a), targets(logits_b, targets_b)]
    total, trained = 0.0, 0
    for x, (label, conf) in zip((logits_a, logits_b), reversed(pseudo)):
        mask = valid & _checks.not_ignored(label, ignore_index) & ~conf.isnan()  # NaN: no softmax, no target
        if threshold > 0:
            mask = mask & (conf >= threshold)
        ce = F.cross_entropy(
            x.to(_compute_dtype(x)), torch.where(mask, label, torch.zeros_like(label)), reduction="none"
        )
        term = torch.where(mask, ce, torch.zeros_like(ce)).sum()
        total = total + _safe_div(term, _masked_denominator(normalizer, valid, mask))
        trained = trained + mask.sum()
    loss = total.float()
    if not return_mask_ratio:
        return loss
    return loss, _safe_div(trained.double(), 2.0 * valid.sum().double()).float()


def entropy_percentile(entropy: torch.Tensor, valid: torch.Tensor | None, q: list):
    """U2PL's threshold: ``np.percentile`` of the valid entropies on the host (in float64 here, the
    reference semantics of the fused op), NaN where NumPy has nothing to take a percentile of."""
    x = entropy.detach()
    if valid is not None:
        x = x[valid]
    a = x.double().cpu().numpy().reshape(-1)
    if a.size == 0:
        res = np.full(len(q), np.nan)
    else:
        res = np.percentile(a, q)
    return torch.as_tensor(np.asarray(res, dtype=np.float64)).float().to(entropy.device)


def negative_class_mask(x: torch.Tensor, low_rank: int, high_rank: int) -> torch.Tensor:
    """U2PL's rank masks: sort the classes, then per class test whether it appears among the sorted
    positions [low_rank, high_rank) (O(C^2 HW), as the official code builds them). The sort is
    stable here so that ties have one defined answer."""
    idx = torch.sort(x.detach(), dim=1, descending=True, stable=True).indices[:, low_rank:high_rank]
    return torch.stack([(idx == c).any(dim=1) for c in range(x.shape[1])], dim=1)


def newest_negatives(prob, label, unreliable, labeled, low_rank, high_rank, threshold, limit, quirks):
    """U2PL's memory-bank push selection with (pixels, classes) masks and a top-k over the pixels:
    for each class the newest (row-major) ``limit`` pixels that are negatives for it, oldest first
    (see :func:`semiseg_fast.ops.newest_negatives`). Returns (index (C, limit), counts (C,))."""
    b, c, h, w = prob.shape
    p = b * h * w
    flat = lambda m: m.permute(0, 2, 3, 1).reshape(p, c)
    top = (
        flat(negative_class_mask(prob, 0, low_rank))
        if low_rank > 0
        else torch.zeros(p, c, dtype=torch.bool, device=prob.device)
    )
    window = flat(negative_class_mask(prob, low_rank, high_rank))
    own = label.reshape(p, 1) == torch.arange(c, device=prob.device)[None, :]
    is_labeled = labeled.to(torch.bool)[:, None, None].expand(b, h, w).reshape(p, 1)
    neg = unreliable.reshape(p, 1) & torch.where(is_labeled, top & ~own, window)
    if quirks:
        neg = neg & own
    neg = neg & (flat(prob.detach()) < threshold)
    limit_ = min(limit, p)
    positions = torch.arange(1, p + 1, device=prob.device)
    newest = torch.topk(torch.where(neg.T, positions[None, :], 0), limit_, dim=1).values  # descending
    newest = torch.sort(torch.where(newest > 0, newest - 1, p), dim=1).values.clamp_max(p - 1)  # oldest first
    index = torch.full((c, limit), max(p - 1, 0), dtype=torch.int64, device=prob.device)
    index[:, :limit_] = newest
    return index, neg.sum(0).clamp_max(limit)
