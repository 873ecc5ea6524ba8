"""Triton kernel of pixel_stats."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import label_dtype
from ._common import block_config, flat_pixels, launch, load_chunk, log1p_pos, pixel_offsets, row_stats


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
    FLAT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    poff = pixel_offsets(hw, W, sH, sW, FLAT)
    y = tl.zeros((BLOCK_P,), tl.int32)
    m, s, rest, t, idx, xy, x_last = row_stats(
        x_ptr + n * sN, poff, pmask, y, C, sC, inv_t, num_chunks, False, True, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    out = n * HW + hw
    tl.store(conf_ptr + out, 1.0 / s, mask=pmask)
    tl.store(label_ptr + out, idx.to(label_ptr.dtype.element_ty), mask=pmask)
    tl.store(ent_ptr + out, log1p_pos(rest) - t / s, mask=pmask)


def pixel_stats(logits: torch.Tensor, temperature: float):
    n, c, h, w = logits.shape
    conf = torch.empty((n, h, w), device=logits.device, dtype=torch.float32)
    label = torch.empty((n, h, w), device=logits.device, dtype=label_dtype(c))
    ent = torch.empty_like(conf)
    if conf.numel() == 0:
        return conf, label, ent
    block_p, block_c, chunks, warps = block_config(c)
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
        FLAT=flat_pixels(h, w, s_h, s_w),
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
    HAS_GC: tl.constexpr,
    HAS_GE: tl.constexpr,
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
    poff = pixel_offsets(hw, W, sH, sW, FLAT)
    goff = pixel_offsets(hw, W, gH, gW, FLAT_G)
    xy = tl.load(base + poff + y.to(tl.int64) * sC, mask=pmask, other=0.0).to(tl.float32)
    lconf = tl.log(conf)
    for k in range(num_chunks):
        x, c = load_chunk(base, poff, pmask, k, C, sC, BLOCK_C)
        d = (x - xy[:, None]) * inv_t
        p = conf[:, None] * tl.exp(d)
        onehot = tl.where(c[None, :] == y[:, None], 1.0, 0.0)
        logp = tl.where(x == float("-inf"), 0.0, d + lconf[:, None])
        g = a[:, None] * (onehot - p) - b[:, None] * p * (logp + ent[:, None])
        tl.store(
            g_ptr + n * gN + goff[:, None] + c[None, :].to(tl.int64) * gC,
            g.to(g_ptr.dtype.element_ty),
            mask=pmask[:, None] & (c < C)[None, :],
        )


def pixel_stats_backward(logits, confidence, label, entropy, grad_conf, grad_ent, temperature):
    n, c, h, w = logits.shape
    grad = torch.empty_like(logits)
    if n * h * w == 0:
        return grad
    block_p, block_c, chunks, warps = block_config(c)
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
        grad,
        c,
        h * w,
        w,
        *logits.stride(),
        *grad.stride(),
        *gc.stride(),
        *ge.stride(),
        1.0 / temperature,
        chunks,
        HAS_GC=grad_conf is not None,
        HAS_GE=grad_ent is not None,
        FLAT=flat_pixels(h, w, logits.stride(2), logits.stride(3)),
        FLAT_G=flat_pixels(h, w, grad.stride(2), grad.stride(3)),
        FLAT_GC=flat_pixels(h, w, gc.stride(1), gc.stride(2)),
        FLAT_GE=flat_pixels(h, w, ge.stride(1), ge.stride(2)),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        SINGLE_CHUNK=chunks == 1,
        num_warps=warps,
    )
    return grad
