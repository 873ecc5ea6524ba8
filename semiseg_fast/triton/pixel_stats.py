"""Triton kernel of pixel_stats (with ``size=``, at the output resolution: see .resample)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import label_dtype, saved_grad_dtype
from ._common import (
    block_config,
    flat_pixels,
    launch,
    load_class,
    load_src,
    log1p_pos,
    pixel_offsets,
    row_stats,
    source,
    store_dst,
)
from .resample import Resampling


@triton.jit
def pixel_stats_kernel(
    x_ptr,
    conf_ptr,
    label_ptr,
    ent_ptr,
    C,
    HW,
    W,
    sN,
    sC,
    sH,
    sW,
    inv_t,
    num_chunks,
    ridx_ptr,
    rw_ptr,
    Ho,
    FLAT: tl.constexpr,
    RESAMPLE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    src = source(hw, W, sH, sW, FLAT, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    y = tl.zeros((BLOCK_P,), tl.int32)
    m, s, rest, t, idx, xy, x_last = row_stats(
        x_ptr + n * sN, src, pmask, y, C, sC, inv_t, num_chunks, False, True, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    out = n * HW + hw
    tl.store(conf_ptr + out, 1.0 / s, mask=pmask)
    tl.store(label_ptr + out, idx.to(label_ptr.dtype.element_ty), mask=pmask)
    tl.store(ent_ptr + out, log1p_pos(rest) - t / s, mask=pmask)


def pixel_stats(logits: torch.Tensor, temperature: float, size=None, align_corners: bool = False):
    n, c, h0, w0 = logits.shape
    rs = Resampling(logits, size, align_corners)
    h, w = rs.out_h, rs.out_w
    conf = torch.empty((n, h, w), device=logits.device, dtype=torch.float32)
    label = torch.empty((n, h, w), device=logits.device, dtype=label_dtype(c))
    ent = torch.empty_like(conf)
    if conf.numel() == 0:
        return conf, label, ent
    block_p, block_c, chunks, warps = block_config(c, resample=rs.on)
    s_n, s_c, s_h, s_w = logits.stride()
    grid = (triton.cdiv(h * w, block_p), n)
    launch(
        pixel_stats_kernel,
        grid,
        logits,
        conf,
        label,
        ent,
        c,
        h * w,
        w,
        s_n,
        s_c,
        s_h,
        s_w,
        1.0 / temperature,
        chunks,
        *rs.args(),
        FLAT=flat_pixels(h0, w0, s_h, s_w),
        RESAMPLE=rs.on,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        SINGLE_CHUNK=chunks == 1,
        num_warps=warps,
    )
    return conf, label, ent


@triton.jit
def pixel_stats_backward_kernel(
    x_ptr,
    conf_ptr,
    label_ptr,
    ent_ptr,
    gc_ptr,
    ge_ptr,
    g_ptr,
    C,
    HW,
    W,
    sN,
    sC,
    sH,
    sW,
    gN,
    gC,
    gH,
    gW,
    gcN,
    gcH,
    gcW,
    geN,
    geH,
    geW,
    inv_t,
    num_chunks,
    ridx_ptr,
    rw_ptr,
    Ho,
    HAS_GC: tl.constexpr,
    HAS_GE: tl.constexpr,
    RESAMPLE: tl.constexpr,
    SCATTER: tl.constexpr,
    FLAT: tl.constexpr,
    FLAT_G: tl.constexpr,
    FLAT_GC: tl.constexpr,
    FLAT_GE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    # p_c = conf * exp((x_c - x_y) / T) with y the forward's argmax; see the C++ kernel.
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    out = n * HW + hw
    conf = tl.load(conf_ptr + out, mask=pmask, other=1.0)
    ent = tl.load(ent_ptr + out, mask=pmask, other=0.0)
    y = tl.load(label_ptr + out, mask=pmask, other=0).to(tl.int32)
    a = tl.zeros((BLOCK_P,), tl.float32)
    b = tl.zeros((BLOCK_P,), tl.float32)
    if HAS_GC:
        a = tl.load(gc_ptr + n * gcN + pixel_offsets(hw, W, gcH, gcW, FLAT_GC), mask=pmask, other=0.0) * conf * inv_t
    if HAS_GE:
        b = tl.load(ge_ptr + n * geN + pixel_offsets(hw, W, geH, geW, FLAT_GE), mask=pmask, other=0.0) * inv_t
    base = x_ptr + n * sN
    src = source(hw, W, sH, sW, FLAT, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    dst = source(hw, W, gH, gW, FLAT_G, ridx_ptr, rw_ptr, Ho, pmask, SCATTER)
    xy = load_class(base, src, pmask, y, sC)
    lconf = tl.log(conf)
    for k in range(num_chunks):
        x, c = load_src(base, src, pmask, k, C, sC, BLOCK_C)
        d = (x - xy[:, None]) * inv_t
        p = conf[:, None] * tl.exp(d)
        onehot = tl.where(c[None, :] == y[:, None], 1.0, 0.0)
        logp = tl.where(x == float("-inf"), 0.0, d + lconf[:, None])
        g = a[:, None] * (onehot - p) - b[:, None] * p * (logp + ent[:, None])
        store_dst(g_ptr + n * gN, dst, pmask, g, c, C, gC)


def pixel_stats_backward(
    logits, confidence, label, entropy, grad_conf, grad_ent, temperature, size=None, align_corners: bool = False
):
    n, c, h0, w0 = logits.shape
    rs = Resampling(logits, size, align_corners)
    h, w = rs.out_h, rs.out_w
    if n * h * w == 0:
        return torch.zeros_like(logits)
    # the atomic scatter adds into a zeroed fp32 (fp64) buffer, rounded to the logits' dtype after
    out = torch.empty_like(logits, dtype=saved_grad_dtype(logits.dtype) if rs.scatter() else logits.dtype)
    g = rs.grad_target(out, True)
    block_p, block_c, chunks, warps = block_config(c, resample=rs.on)
    gc = grad_conf if grad_conf is not None else confidence
    ge = grad_ent if grad_ent is not None else entropy
    grid = (triton.cdiv(h * w, block_p), n)
    launch(
        pixel_stats_backward_kernel,
        grid,
        logits,
        confidence.contiguous(),
        label.contiguous(),
        entropy.contiguous(),
        gc,
        ge,
        g,
        c,
        h * w,
        w,
        *logits.stride(),
        *g.stride(),
        *gc.stride(),
        *ge.stride(),
        1.0 / temperature,
        chunks,
        *rs.args(),
        HAS_GC=grad_conf is not None,
        HAS_GE=grad_ent is not None,
        RESAMPLE=rs.on,
        SCATTER=rs.scatter(),
        FLAT=flat_pixels(h0, w0, logits.stride(2), logits.stride(3)),
        FLAT_G=flat_pixels(g.shape[2], g.shape[3], g.stride(2), g.stride(3)),
        FLAT_GC=flat_pixels(h, w, gc.stride(1), gc.stride(2)),
        FLAT_GE=flat_pixels(h, w, ge.stride(1), ge.stride(2)),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        SINGLE_CHUNK=chunks == 1,
        num_warps=warps,
    )
    out = rs.finish_grad(g, out)
    return out if out.dtype == logits.dtype else out.to(logits.dtype)
