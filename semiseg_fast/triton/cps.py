"""Triton kernel of cps_loss: both networks' targets and cross-entropies in one program (with
``size=``, at the output resolution: see .resample)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import saved_grad_buffer
from ._common import (
    CHUNK_CLASSES,
    KERNEL_TILES,
    MaskedMean,
    block_config,
    ce_from_stats,
    flat_pixels,
    launch,
    pixel_offsets,
    row_stats,
    source,
    store_grad,
)
from .resample import Resampling


@triton.jit
def _given_targets(label_ptr, conf_ptr, hw, W, sN, sH, sW, n, FLAT: tl.constexpr, pmask, C, ignore_index):
    """(label, confidence, has target) read from the maps a network provides."""
    off = n * sN + pixel_offsets(hw, W, sH, sW, FLAT)
    y = tl.load(label_ptr + off, mask=pmask, other=0).to(tl.int64)
    conf = tl.load(conf_ptr + off, mask=pmask, other=0.0).to(tl.float32)
    has = (y >= 0) & (y < C) & (y != ignore_index)
    return tl.where(has, y, 0).to(tl.int32), conf, has


@triton.jit
def _term(
    x_ptr,
    g_ptr,
    src,
    dst,
    pmask,
    label,
    active,
    gscale_ptr,
    C,
    sC,
    sCg,
    num_chunks,
    NEED_GRAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    """One network's cross-entropy against its peer's labels where active (a float 0/1): the per-pixel
    loss, its gradient written through ``dst``, and the network's own argmax and 1 / sum of exp."""
    m, s, rest, _t, idx, xy, x_last = row_stats(
        x_ptr, src, pmask, label, C, sC, 1.0, num_chunks, True, False, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    ce = tl.where(active != 0.0, ce_from_stats(m, s, rest, xy), 0.0)
    if NEED_GRAD:
        scale = tl.where(active != 0.0, tl.load(gscale_ptr) / s, 0.0)
        store_grad(
            x_ptr, g_ptr, src, dst, pmask, x_last, m, label, scale, rest, C, sC, sCg, num_chunks, BLOCK_C, SINGLE_CHUNK
        )
    return ce, idx, 1.0 / s


@triton.jit
def cps_kernel(
    a_ptr,
    b_ptr,
    mask_ptr,
    ga_ptr,
    gb_ptr,
    la_ptr,
    ca_ptr,
    lb_ptr,
    cb_ptr,
    partial_ptr,
    count_ptr,
    gscale_ptr,
    C,
    HW,
    W,
    threshold,
    ignore_index,
    num_chunks,
    num_programs,
    saN,
    saC,
    saH,
    saW,
    sbN,
    sbC,
    sbH,
    sbW,
    smN,
    smH,
    smW,
    sgaN,
    sgaC,
    sgaH,
    sgaW,
    sgbN,
    sgbC,
    sgbH,
    sgbW,
    stN,
    stH,
    stW,
    ridx_ptr,
    rw_ptr,
    Ho,
    RESAMPLE: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_MASK: tl.constexpr,
    MASK_IS_BOOL: tl.constexpr,
    TARGETS_A: tl.constexpr,
    TARGETS_B: tl.constexpr,
    NEED_GRAD_A: tl.constexpr,
    NEED_GRAD_B: tl.constexpr,
    FLAT_A: tl.constexpr,
    FLAT_B: tl.constexpr,
    FLAT_M: tl.constexpr,
    FLAT_GA: tl.constexpr,
    FLAT_GB: tl.constexpr,
    FLAT_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    valid = pmask
    if HAS_MASK:
        mv = tl.load(mask_ptr + n * smN + pixel_offsets(hw, W, smH, smW, FLAT_M), mask=pmask, other=0)
        if MASK_IS_BOOL:
            valid = valid & (mv == 0)
        else:
            valid = valid & (mv.to(tl.int64) != ignore_index)
    # Each read's source tuple is built where it is used, not kept: with size= a tuple is 8 vectors,
    # and holding both networks' took the kernel to 120 registers.
    zero = tl.zeros((BLOCK_P,), tl.int32)
    # b's targets train a: given, or b's argmax and confidence (one more read of b)
    if TARGETS_B:
        label_b, conf_b, has_b = _given_targets(lb_ptr, cb_ptr, hw, W, stN, stH, stW, n, FLAT_T, pmask, C, ignore_index)
    else:
        _m, s_b, _r, _t, label_b, _xy, _x = row_stats(
            b_ptr + n * sbN,
            source(hw, W, sbH, sbW, FLAT_B, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE),
            pmask,
            zero,
            C,
            sbC,
            1.0,
            num_chunks,
            False,
            False,
            BLOCK_P,
            BLOCK_C,
            SINGLE_CHUNK,
        )
        conf_b = 1.0 / s_b
        has_b = pmask
    # Carried as floats: live predicates across the inlined log made ptxas spill (see fixmatch).
    active_a = tl.where(valid & has_b & (conf_b == conf_b) & ((threshold <= 0.0) | (conf_b >= threshold)), 1.0, 0.0)
    ce_a, label_a, conf_a = _term(
        a_ptr + n * saN,
        ga_ptr + n * sgaN,
        source(hw, W, saH, saW, FLAT_A, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE),
        source(hw, W, sgaH, sgaW, FLAT_GA, ridx_ptr, rw_ptr, Ho, pmask, SCATTER),
        pmask,
        label_b,
        active_a,
        gscale_ptr,
        C,
        saC,
        sgaC,
        num_chunks,
        NEED_GRAD_A,
        BLOCK_P,
        BLOCK_C,
        SINGLE_CHUNK,
    )
    has_a = pmask
    if TARGETS_A:
        label_a, conf_a, has_a = _given_targets(la_ptr, ca_ptr, hw, W, stN, stH, stW, n, FLAT_T, pmask, C, ignore_index)
    active_b = tl.where(valid & has_a & (conf_a == conf_a) & ((threshold <= 0.0) | (conf_a >= threshold)), 1.0, 0.0)
    ce_b, _l, _c = _term(
        b_ptr + n * sbN,
        gb_ptr + n * sgbN,
        source(hw, W, sbH, sbW, FLAT_B, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE),
        source(hw, W, sgbH, sgbW, FLAT_GB, ridx_ptr, rw_ptr, Ho, pmask, SCATTER),
        pmask,
        label_a,
        active_b,
        gscale_ptr,
        C,
        sbC,
        sgbC,
        num_chunks,
        NEED_GRAD_B,
        BLOCK_P,
        BLOCK_C,
        SINGLE_CHUNK,
    )
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(partial_ptr + pid, tl.sum(ce_a, axis=0))
    tl.store(partial_ptr + num_programs + pid, tl.sum(ce_b, axis=0))
    tl.store(count_ptr + pid, tl.sum(active_a, axis=0).to(tl.int32))
    tl.store(count_ptr + num_programs + pid, tl.sum(active_b, axis=0).to(tl.int32))


def cps(
    logits_a,
    logits_b,
    ignore_mask,
    ignore_index,
    threshold,
    norm_mode,
    norm_value,
    label_a,
    conf_a,
    label_b,
    conf_b,
    need_grad_a,
    need_grad_b,
    size=None,
    align_corners=False,
):
    n, c, h0, w0 = logits_a.shape
    rs = Resampling(logits_a, size, align_corners)
    h, w = rs.out_h, rs.out_w
    dev = logits_a.device
    block_p, block_c, chunks, warps = block_config(c, CHUNK_CLASSES["cps_kernel"], rs.on, **KERNEL_TILES["cps_kernel"])
    grid = (triton.cdiv(h * w, block_p), n)
    programs = grid[0] * grid[1]
    partial = torch.zeros(2 * programs, device=dev, dtype=torch.float32)
    counts = torch.zeros(2 * programs, device=dev, dtype=torch.int32)
    mean = MaskedMean(ignore_mask, ignore_index, n * h * w, norm_mode, norm_value, dev)
    grads = [saved_grad_buffer(logits_a, need_grad_a), saved_grad_buffer(logits_b, need_grad_b)]
    if n * h * w == 0:
        for g in grads:
            g.zero_()
    else:
        mask = ignore_mask if ignore_mask is not None else partial
        need = (need_grad_a, need_grad_b)
        targets = [rs.grad_target(g, k) if k else x for g, k, x in zip(grads, need, (logits_a, logits_b))]
        m_strides = ignore_mask.stride() if ignore_mask is not None else (0, 0, 0)
        given = [label_a, conf_a, label_b, conf_b]
        if len({t.stride() for t in given if t is not None}) > 1:  # the kernel reads them with one set of strides
            given = [None if t is None else t.contiguous() for t in given]
        t_strides = next((t.stride() for t in given if t is not None), (0, 0, 0))
        launch(
            cps_kernel,
            grid,
            logits_a,
            logits_b,
            mask,
            *targets,
            *(t if t is not None else partial for t in given),  # absent maps: a placeholder, never read
            partial,
            counts,
            mean.inv,
            c,
            h * w,
            w,
            threshold,
            ignore_index,
            chunks,
            programs,
            *logits_a.stride(),
            *logits_b.stride(),
            *m_strides,
            *targets[0].stride(),
            *targets[1].stride(),
            *t_strides,
            *rs.args(),
            RESAMPLE=rs.on,
            SCATTER=rs.scatter(),
            HAS_MASK=ignore_mask is not None,
            MASK_IS_BOOL=ignore_mask is not None and ignore_mask.dtype == torch.bool,
            TARGETS_A=label_a is not None,
            TARGETS_B=label_b is not None,
            NEED_GRAD_A=need_grad_a,
            NEED_GRAD_B=need_grad_b,
            FLAT_A=flat_pixels(h0, w0, logits_a.stride(2), logits_a.stride(3)),
            FLAT_B=flat_pixels(h0, w0, logits_b.stride(2), logits_b.stride(3)),
            FLAT_M=flat_pixels(h, w, m_strides[1], m_strides[2]),
            FLAT_GA=flat_pixels(targets[0].shape[2], targets[0].shape[3], targets[0].stride(2), targets[0].stride(3)),
            FLAT_GB=flat_pixels(targets[1].shape[2], targets[1].shape[3], targets[1].stride(2), targets[1].stride(3)),
            FLAT_T=flat_pixels(h, w, t_strides[1], t_strides[2]),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            SINGLE_CHUNK=chunks == 1,
            num_warps=warps,
        )
        for k in range(2):
            if need[k]:
                rs.finish_grad(targets[k], grads[k])
    loss_a, ratio_a, post_a = mean.finish(partial[:programs], counts[:programs])
    loss_b, ratio_b, post_b = mean.finish(partial[programs:], counts[programs:])
    return loss_a + loss_b, (ratio_a + ratio_b) / 2, grads[0], grads[1], post_a, post_b
