"""U2PL's contrastive term with unreliable pixels as negatives, in fixed-size tensors: no
per-class Python loop over pixels, no boolean indexing, no host sync."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from ..ops import infonce_loss
from ..ops.feature_rows import feature_rows, pixel_rows
from ..ops.newest_negatives import newest_negatives
from .memory_bank import ClassMemoryBank


@dataclass
class ContrastiveDraws:
    """Positions per class slot k (the k-th present class in ascending order): anchors (K, Q)
    among that slot's anchor candidates, negatives (K, Q * num_negatives) among its queue, both
    taken modulo the number of candidates."""

    anchors: torch.Tensor
    negatives: torch.Tensor


def _draw(count: torch.Tensor, shape, generator) -> torch.Tensor:
    """Uniform integers in [0, count) per row, without reading count on the host."""
    u = torch.rand(shape, generator=generator, device=count.device)
    return (u * count[:, None].clamp_min(1)).long().clamp_max((count[:, None] - 1).clamp_min(0))


def u2pl_contrastive_loss(
    rep: torch.Tensor,
    rep_teacher: torch.Tensor,
    prob_teacher: torch.Tensor,
    label: torch.Tensor,
    reliable: torch.Tensor,
    unreliable: torch.Tensor,
    is_labeled: torch.Tensor,
    bank: ClassMemoryBank,
    low_rank: int = 3,
    high_rank: int = 20,
    current_class_threshold: float = 0.3,
    current_class_negative_threshold: float = 1.0,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 50,
    push_limit: int = 4096,
    ignore_index: int = 255,
    official_quirks: bool = False,
    generator: torch.Generator | None = None,
    draws: ContrastiveDraws | None = None,
) -> torch.Tensor:
    """U2PL's contrastive loss (official ``compute_contra_memobank_loss``), all at feature resolution.

    For each class c present among the reliable pixels: anchors are student features of reliable
    pixels labeled c with teacher probability > ``current_class_threshold``; the positive is the
    mean teacher feature of the reliable pixels labeled c; negatives are drawn from class c's
    memory-bank queue, which this step first extends with the teacher features of the pixels
    that are negatives for c (all classes at once, all ranks under DDP). InfoNCE over the cosine
    similarities / ``temperature``, averaged over queries and then over the present classes.

    Negatives for class c (paper): labeled pixels whose label is not c and whose prediction ranks
    c in [0, low_rank); unreliable unlabeled pixels whose prediction ranks c in
    [low_rank, high_rank); both with teacher probability of c below
    ``current_class_negative_threshold``. ``official_quirks=True`` reproduces the official code
    instead: labeled pixels never give negatives, unlabeled ones only for their own pseudo-label,
    and the k-th present class takes the anchors and prototype of class k (not of the k-th present
    class) with the queue of the k-th present class (U2PL issues #171 and #111).

    Args:
        rep, rep_teacher: (B, D, h, w) student (with gradient) and teacher features.
        prob_teacher: (B, C, h, w) teacher probabilities.
        label: (B, h, w) integers: ground truth on labeled images, pseudo-labels on the others.
        reliable, unreliable: (B, h, w) bool: low- and high-entropy pixels (U2PL marks every valid
            labeled pixel as both).
        is_labeled: (B,) bool.
        bank: the class memory bank (updated in place).
        push_limit: at most this many negatives per class enter the bank per step (the newest in
            row-major order); a limit of at least the bank's capacity gives the official behaviour.
        generator: for the anchor and negative draws.
        draws: fixed draws instead of random ones (for tests against the official transcription).
    """
    for name, t in (("rep", rep), ("prob_teacher", prob_teacher)):
        if _checks.tensor(t, name).dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor (B, D or C, H, W), got shape {tuple(t.shape)}")
    b, d, h, w = rep.shape
    c = prob_teacher.shape[1]
    for name, t, shape in [
        ("rep_teacher", rep_teacher, (b, d, h, w)),
        ("prob_teacher", prob_teacher, (b, c, h, w)),
        ("label", label, (b, h, w)),
        ("reliable", reliable, (b, h, w)),
        ("unreliable", unreliable, (b, h, w)),
        ("is_labeled", is_labeled, (b,)),
    ]:
        if tuple(_checks.tensor(t, name).shape) != shape:
            raise ValueError(
                f"{name}: expected shape {shape} (batch and size of rep {tuple(rep.shape)}), got {tuple(t.shape)}"
            )
    if bank.num_classes != c or bank.dim != d:
        raise ValueError(f"bank: expected {c} classes of dim {d}, got {bank.num_classes} of dim {bank.dim}")
    _checks.number(temperature, "temperature", low=0.0, low_open=True)
    if num_queries < 1 or num_negatives < 1 or push_limit < 1:
        raise ValueError("num_queries, num_negatives, push_limit: expected >= 1")
    dev = rep.device
    p = b * h * w

    with torch.no_grad():
        feats_t = feature_rows(rep_teacher)
        prob = prob_teacher.detach()
        lab = label.reshape(p).long()
        valid = (lab != ignore_index) & (lab >= 0) & (lab < c)
        lab_c = torch.where(valid, lab, torch.full_like(lab, c))  # c = "no class"
        rel = reliable.reshape(p) & valid
        prob_lab = prob.gather(1, lab_c.clamp_max(c - 1).view(b, 1, h, w)).reshape(p)

        # Prototypes: mean teacher feature of the reliable pixels of each class.
        low_cls = torch.where(rel, lab_c, torch.full_like(lab_c, c))
        count_low = torch.bincount(low_cls, minlength=c + 1)[:c]
        sums = torch.zeros(c + 1, d, device=dev, dtype=feats_t.dtype).index_add_(0, low_cls, feats_t)[:c]
        proto = sums / count_low.clamp_min(1)[:, None].to(sums.dtype)

        # Anchor candidates, grouped by class in row-major order (a stable sort by class).
        anchor_cls = torch.where(rel & (prob_lab > current_class_threshold), lab_c, torch.full_like(lab_c, c))
        anchor_count = torch.bincount(anchor_cls, minlength=c + 1)[:c]
        anchor_order = torch.sort(anchor_cls, stable=True).indices
        anchor_start = torch.cumsum(anchor_count, 0) - anchor_count

        # The newest push_limit negatives of each class enter the bank.
        newest, push_counts = newest_negatives(
            prob.float(),
            lab_c,
            unreliable.reshape(p) & valid,
            is_labeled.to(device=dev, dtype=torch.bool),
            low_rank,
            high_rank,
            current_class_negative_threshold,
            min(push_limit, p),
            official_quirks,
        )
        bank.push_rows_all_ranks(feats_t, newest, push_counts)

        # Slots: the k-th present class, in ascending class order.
        present = count_low > 0
        valid_seg = present.sum()
        present_order = torch.sort((~present).to(torch.int8), stable=True).indices  # present classes first
        slots = torch.arange(c, device=dev)
        queue_cls = present_order
        anchor_slot_cls = slots if official_quirks else present_order
        active = (slots < valid_seg) & (anchor_count[anchor_slot_cls] > 0) & (bank.length[queue_cls] > 0)

        if draws is None:
            a_idx = _draw(anchor_count[anchor_slot_cls], (c, num_queries), generator)
            n_idx = _draw(bank.length[queue_cls], (c, num_queries * num_negatives), generator)
        else:
            a_idx = _pad_rows(draws.anchors, c, num_queries, dev)
            n_idx = _pad_rows(draws.negatives, c, num_queries * num_negatives, dev)
        a_idx = a_idx % anchor_count[anchor_slot_cls][:, None].clamp_min(1)
        anchor_pix = anchor_order[(anchor_start[anchor_slot_cls][:, None] + a_idx).clamp_max(p - 1)]
        rows = bank.rows(queue_cls, n_idx).reshape(c, num_queries, num_negatives)
        positive = proto[anchor_slot_cls].float()
        # the mean over queries, then over the present classes (none when fewer than two)
        weight = torch.where(active & (valid_seg > 1), 1.0 / (num_queries * valid_seg.clamp_min(1)), 0.0).float()

    q = pixel_rows(rep, anchor_pix).float()  # (C, Q, D): the gradient flows back to rep here
    keys = bank.keys  # the negatives are read by row inside the kernel
    if keys.dtype != torch.float32:  # a bank kept in another dtype: its drawn rows, gathered in fp32
        keys = keys[rows.reshape(-1)].float()
        rows = torch.arange(keys.shape[0], device=dev).view(rows.shape)
    # rep is in the graph through q even when no slot is active (zero weights): every parameter
    # that made it gets a gradient, which DDP needs (the official code adds 0 * rep.sum() for that).
    return infonce_loss(q, positive, keys, rows, weight, temperature)


def _pad_rows(index: torch.Tensor, rows: int, cols: int, device) -> torch.Tensor:
    out = torch.zeros(rows, cols, dtype=torch.long, device=device)
    out[: index.shape[0]] = index.to(device).reshape(index.shape[0], cols)
    return out
