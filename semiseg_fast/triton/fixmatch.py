"""Triton kernel of fixmatch_loss: teacher statistics and student cross-entropy in one program (with
``size=``, at the output resolution: see .resample)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import saved_grad_buffer
from ._common import (
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
def fixmatch_kernel(
    s_ptr,
    t_ptr,
    mask_ptr,
    g_ptr,
    partial_ptr,
    count_ptr,
    gscale_ptr,
    C,
    HW,
    W,
    threshold,
    ignore_index,
    num_chunks,
    ssN,
    ssC,
    ssH,
    ssW,
    stN,
    stC,
    stH,
    stW,
    smN,
    smH,
    smW,
    sgN,
    sgC,
    sgH,
    sgW,
    ridx_ptr,
    rw_ptr,
    Ho,
    RESAMPLE: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_MASK: tl.constexpr,
    MASK_IS_BOOL: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    FLAT_S: tl.constexpr,
    FLAT_T: tl.constexpr,
    FLAT_M: tl.constexpr,
    FLAT_G: tl.constexpr,
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
    zero = tl.zeros((BLOCK_P,), tl.int32)
    tm, ts, _r, _t, label, _xy, _x = row_stats(
        t_ptr + n * stN,
        source(hw, W, stH, stW, FLAT_T, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE),
        pmask,
        zero,
        C,
        stC,
        1.0,
        num_chunks,
        False,
        False,
        BLOCK_P,
        BLOCK_C,
        SINGLE_CHUNK,
    )
    # Carried as a float: live predicates across the inlined log made ptxas spill on sm_80.
    active = tl.where(valid & ((1.0 / ts) >= threshold), 1.0, 0.0)
    src = source(hw, W, ssH, ssW, FLAT_S, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    m, s, rest, t, idx, xy, x_last = row_stats(
        s_ptr + n * ssN, src, pmask, label, C, ssC, 1.0, num_chunks, True, False, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    ce = tl.where(active != 0.0, ce_from_stats(m, s, rest, xy), 0.0)
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(partial_ptr + pid, tl.sum(ce, axis=0))
    tl.store(count_ptr + pid, tl.sum(active, axis=0).to(tl.int32))
    if NEED_GRAD:
        scale = tl.where(active != 0.0, tl.load(gscale_ptr) / s, 0.0)
        store_grad(
            s_ptr + n * ssN,
            g_ptr + n * sgN,
            src,
            source(hw, W, sgH, sgW, FLAT_G, ridx_ptr, rw_ptr, Ho, pmask, SCATTER),
            pmask,
            x_last,
            m,
            label,
            scale,
            rest,
            C,
            ssC,
            sgC,
            num_chunks,
            BLOCK_C,
            SINGLE_CHUNK,
        )


def fixmatch(
    student,
    teacher,
    threshold,
    ignore_mask,
    ignore_index,
    norm_mode,
    norm_value,
    need_grad,
    size=None,
    align_corners=False,
):
    n, c, h0, w0 = student.shape
    rs = Resampling(student, size, align_corners)
    h, w = rs.out_h, rs.out_w
    dev = student.device
    block_p, block_c, chunks, warps = block_config(c, resample=rs.on)
    grid = (triton.cdiv(h * w, block_p), n)
    partial = torch.zeros(grid[0] * grid[1], device=dev, dtype=torch.float32)
    counts = torch.zeros(grid[0] * grid[1], device=dev, dtype=torch.int32)
    mean = MaskedMean(ignore_mask, ignore_index, n * h * w, norm_mode, norm_value, dev)
    grad = saved_grad_buffer(student, need_grad)
    if n * h * w == 0:
        grad.zero_()
    else:
        mask = ignore_mask if ignore_mask is not None else partial
        g = rs.grad_target(grad, need_grad) if need_grad else student
        m_strides = ignore_mask.stride() if ignore_mask is not None else (0, 0, 0)
        launch(
            fixmatch_kernel,
            grid,
            student,
            teacher,
            mask,
            g,
            partial,
            counts,
            mean.inv,
            c,
            h * w,
            w,
            threshold,
            ignore_index,
            chunks,
            *student.stride(),
            *teacher.stride(),
            *m_strides,
            *g.stride(),
            *rs.args(),
            RESAMPLE=rs.on,
            SCATTER=rs.scatter(),
            HAS_MASK=ignore_mask is not None,
            MASK_IS_BOOL=ignore_mask is not None and ignore_mask.dtype == torch.bool,
            NEED_GRAD=need_grad,
            FLAT_S=flat_pixels(h0, w0, student.stride(2), student.stride(3)),
            FLAT_T=flat_pixels(h0, w0, teacher.stride(2), teacher.stride(3)),
            FLAT_M=flat_pixels(h, w, m_strides[1], m_strides[2]),
            FLAT_G=flat_pixels(g.shape[2], g.shape[3], g.stride(2), g.stride(3)),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            SINGLE_CHUNK=chunks == 1,
            num_warps=warps,
        )
        if need_grad:
            rs.finish_grad(g, grad)
    loss, ratio, post = mean.finish(partial, counts)
    return loss, ratio, grad, post
