"""Triton kernel of pseudo_label_cross_entropy: loss and gradient in one pass (with ``size=``, at the
output resolution: see .resample)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import Reduction, mean_denominator, saved_grad_buffer
from ._common import (
    block_config,
    ce_from_stats,
    flat_pixels,
    inverse,
    launch,
    pixel_offsets,
    row_stats,
    source,
    store_grad,
)
from .resample import Resampling


@triton.jit
def cross_entropy_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    g_ptr,
    loss_ptr,
    ce_ptr,
    partial_ptr,
    gscale_ptr,
    C,
    HW,
    W,
    ignore_index,
    num_chunks,
    sxN,
    sxC,
    sxH,
    sxW,
    stN,
    stH,
    stW,
    swN,
    swH,
    swW,
    sgN,
    sgC,
    sgH,
    sgW,
    ridx_ptr,
    rw_ptr,
    Ho,
    RESAMPLE: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_W: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    PIXEL_LOSS: tl.constexpr,
    NEED_CE: tl.constexpr,
    FLAT_X: tl.constexpr,
    FLAT_T: tl.constexpr,
    FLAT_W: tl.constexpr,
    FLAT_G: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    y = tl.load(t_ptr + n * stN + pixel_offsets(hw, W, stH, stW, FLAT_T), mask=pmask, other=ignore_index).to(tl.int64)
    valid = pmask & (y != ignore_index)
    in_range = (y >= 0) & (y < C)
    y32 = tl.where(in_range, y, 0).to(tl.int32)
    if HAS_W:
        w = tl.load(w_ptr + n * swN + pixel_offsets(hw, W, swH, swW, FLAT_W), mask=pmask, other=0).to(tl.float32)
    else:
        w = tl.full((BLOCK_P,), 1.0, tl.float32)
    # Masks are carried as floats: live predicates across the inlined log made ptxas spill on sm_80.
    # wa = the pixel's weight where it counts, else 0; poison = NaN for an out-of-range target
    # (there is no host sync here to raise), else 0.
    wa = tl.where(valid & in_range, w, 0.0)
    poison = tl.where(valid & ~in_range, float("nan"), 0.0)
    src = source(hw, W, sxH, sxW, FLAT_X, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    m, s, rest, t, idx, xy, x_last = row_stats(
        x_ptr + n * sxN, src, pmask, y32, C, sxC, 1.0, num_chunks, True, False, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    ce_all = ce_from_stats(m, s, rest, xy)
    ce = tl.where(wa != 0.0, ce_all, 0.0) + poison
    lp = tl.where(wa != 0.0, wa * ce_all, 0.0) + poison
    out = n * HW + hw
    if PIXEL_LOSS:
        tl.store(loss_ptr + out, lp, mask=pmask)
    if NEED_CE:
        tl.store(ce_ptr + out, ce, mask=pmask)
    tl.store(partial_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), tl.sum(lp, axis=0))
    if NEED_GRAD:
        scale = tl.where(wa != 0.0, wa * tl.load(gscale_ptr) / s, 0.0) + poison
        store_grad(
            x_ptr + n * sxN,
            g_ptr + n * sgN,
            src,
            source(hw, W, sgH, sgW, FLAT_G, ridx_ptr, rw_ptr, Ho, pmask, SCATTER),
            pmask,
            x_last,
            m,
            y32,
            scale,
            rest,
            C,
            sxC,
            sgC,
            num_chunks,
            BLOCK_C,
            SINGLE_CHUNK,
        )


def cross_entropy(
    logits,
    target,
    weight,
    ignore_index,
    reduction,
    norm_mode,
    norm_value,
    norm_tensor,
    need_grad,
    need_ce,
    size=None,
    align_corners=False,
):
    n, c, h0, w0 = logits.shape
    rs = Resampling(logits, size, align_corners)
    h, w = rs.out_h, rs.out_w
    dev = logits.device
    block_p, block_c, chunks, warps = block_config(c, resample=rs.on)
    grid = (triton.cdiv(h * w, block_p), n)
    partial = torch.zeros(grid[0] * grid[1], device=dev, dtype=torch.float32)
    if reduction == Reduction.MEAN:
        inv = inverse(
            mean_denominator(target, weight, ignore_index, norm_mode, norm_value, norm_tensor, n * h * w, dev)
        )
    else:
        inv = torch.ones((), device=dev)
    inv = inv.float()
    grad = saved_grad_buffer(logits, need_grad)
    if n * h * w == 0:
        grad.zero_()
    loss_pixel = torch.empty((n, h, w), device=dev, dtype=torch.float32) if reduction == Reduction.NONE else partial
    ce = torch.empty((n, h, w), device=dev, dtype=torch.float32) if need_ce else torch.empty(0, device=dev)
    if n * h * w > 0:
        wt = weight if weight is not None else target
        g = rs.grad_target(grad, need_grad) if need_grad else logits
        launch(
            cross_entropy_kernel,
            grid,
            logits,
            target,
            wt,
            g,
            loss_pixel,
            ce,
            partial,
            inv,
            c,
            h * w,
            w,
            ignore_index,
            chunks,
            *logits.stride(),
            *target.stride(),
            *wt.stride(),
            *g.stride(),
            *rs.args(),
            RESAMPLE=rs.on,
            SCATTER=rs.scatter(),
            HAS_W=weight is not None,
            NEED_GRAD=need_grad,
            PIXEL_LOSS=reduction == Reduction.NONE,
            NEED_CE=need_ce,
            FLAT_X=flat_pixels(h0, w0, logits.stride(2), logits.stride(3)),
            FLAT_T=flat_pixels(h, w, target.stride(1), target.stride(2)),
            FLAT_W=flat_pixels(h, w, wt.stride(1), wt.stride(2)),
            FLAT_G=flat_pixels(g.shape[2], g.shape[3], g.stride(2), g.stride(3)),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            SINGLE_CHUNK=chunks == 1,
            num_warps=warps,
        )
        if need_grad:
            rs.finish_grad(g, grad)
    if reduction == Reduction.NONE:
        loss = loss_pixel
    else:
        loss = partial.double().sum().float() * (inv if reduction == Reduction.MEAN else 1.0)
    return loss, grad, ce
