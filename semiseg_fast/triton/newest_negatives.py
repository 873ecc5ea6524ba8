"""Triton version of U2PL's memory-bank push selection (see csrc/cpu/newest_negatives.cpp): per class,
the newest pixels that are negatives for it. Two passes over (class, pixel block): count the
negatives of each block, then, with the counts of the blocks after it (a cumulative sum on the
device), write each negative that is among the newest ``limit`` to its slot, oldest first."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch


@triton.jit
def _negative_flags(
    prob_ptr,
    label_ptr,
    unrel_ptr,
    labeled_ptr,
    k,
    offs,
    pmask,
    C,
    HW,
    low,
    high,
    thr,
    QUIRKS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = offs // HW
    base = prob_ptr + b * C * HW + offs % HW
    xk = tl.load(base + k * HW, mask=pmask, other=float("nan"))
    cls = tl.arange(0, BLOCK_C)
    xt = tl.load(base[:, None] + cls[None, :] * HW, mask=pmask[:, None] & (cls < C)[None, :], other=float("-inf"))
    before = (xt > xk[:, None]) | ((xt == xk[:, None]) & (cls[None, :] < k))
    rank = tl.sum(before.to(tl.int32), 1)
    own = tl.load(label_ptr + offs, mask=pmask, other=-1) == k
    unrel = tl.load(unrel_ptr + offs, mask=pmask, other=0) != 0
    is_labeled = tl.load(labeled_ptr + b, mask=pmask, other=0) != 0
    ok = tl.where(is_labeled, (rank < low) & ~own, (rank >= low) & (rank < high))
    if QUIRKS:
        ok = ok & own
    return pmask & unrel & (xk < thr) & ok


@triton.jit
def newest_negatives_kernel(
    prob_ptr,
    label_ptr,
    unrel_ptr,
    labeled_ptr,
    counts_ptr,
    after_ptr,
    kept_ptr,
    index_ptr,
    P,
    C,
    HW,
    low,
    high,
    thr,
    num_blocks,
    limit,
    WRITE: tl.constexpr,
    QUIRKS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (class k, pixel block): WRITE=False counts the block's negatives for k; WRITE=True
    writes those among the newest ``limit`` to their slots, oldest first."""
    k = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    neg = _negative_flags(
        prob_ptr, label_ptr, unrel_ptr, labeled_ptr, k, offs, offs < P, C, HW, low, high, thr, QUIRKS, BLOCK_C
    ).to(tl.int32)
    if WRITE:
        # negatives after this pixel: in later blocks, then later in this block (0 = the newest)
        from_end = tl.load(after_ptr + k * num_blocks + blk) + tl.sum(neg, 0) - tl.cumsum(neg, 0)
        slot = tl.load(kept_ptr + k) - 1 - from_end
        tl.store(index_ptr + k.to(tl.int64) * limit + slot, offs, mask=(neg != 0) & (from_end < limit))
    else:
        tl.store(counts_ptr + k * num_blocks + blk, tl.sum(neg, 0))


def newest_negatives(prob, label, unreliable, labeled, low_rank, high_rank, threshold, limit, quirks):
    b, c, h, w = prob.shape
    p, hw = b * h * w, h * w
    x = prob.contiguous()
    block_c = triton.next_power_of_2(c)
    block_p = max(16, 1024 // block_c)
    blocks = triton.cdiv(p, block_p)
    lab, unrel = label.contiguous(), unreliable.contiguous().view(torch.uint8)
    lbl = labeled.contiguous().view(torch.uint8)
    index = torch.full((c, limit), max(p - 1, 0), dtype=torch.int64, device=prob.device)
    if p == 0:
        return index, torch.zeros(c, dtype=torch.int64, device=prob.device)
    common = dict(QUIRKS=quirks, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    counts = torch.empty((c, blocks), dtype=torch.int32, device=prob.device)
    inputs = (x, lab, unrel, lbl)
    sizes = (p, c, hw, low_rank, high_rank, threshold, blocks, limit)
    launch(newest_negatives_kernel, (c, blocks), *inputs, counts, counts, counts, index, *sizes, WRITE=False, **common)
    counts = counts.to(torch.int64)
    after = counts.flip(1).cumsum(1).flip(1) - counts  # negatives in the blocks after each block
    kept = counts.sum(1).clamp_max(limit)
    launch(newest_negatives_kernel, (c, blocks), *inputs, counts, after, kept, index, *sizes, WRITE=True, **common)
    return index, kept
