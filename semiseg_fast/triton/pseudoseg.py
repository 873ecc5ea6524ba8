"""Triton kernel of PseudoSeg's consistency loss: the fused target and the student's cross-entropy
in one program (same per-pixel math as the C++ kernel; see csrc/common/kernels_impl.h); with ``size=``, at
the output resolution (see .resample)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import saved_grad_buffer
from ._common import (
    CHUNK_CLASSES,
    MaskedMean,
    block_config,
    ce_from_stats,
    flat_pixels,
    launch,
    load_src,
    pixel_offsets,
    row_stats,
    source,
    store_dst,
)
from .resample import Resampling

_IDENTITY, _SQUARE, _POWER = 0, 1, 2


@triton.jit
def sumsq_kernel(
    x_ptr,
    partial_ptr,
    C,
    HW,
    W,
    sN,
    sC,
    sH,
    sW,
    num_chunks,
    ridx_ptr,
    rw_ptr,
    Ho,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per-program sums of the squares of the logits interpolated to (Ho, W) (fp32 math)."""
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    src = source(hw, W, sH, sW, False, ridx_ptr, rw_ptr, Ho, pmask, True)
    acc = tl.zeros((BLOCK_P,), tl.float32)
    for k in range(num_chunks):
        x, c = load_src(x_ptr + n * sN, src, pmask, k, C, sC, BLOCK_C)
        acc += tl.sum(tl.where((c < C)[None, :], x * x, 0.0), axis=1)
    tl.store(partial_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), tl.sum(acc, axis=0))


def _sumsq_resampled(x: torch.Tensor, rs: Resampling) -> torch.Tensor:
    """sum(F.interpolate(x)^2) in fp64 from fp32 per-program partials, without the upsampled tensor."""
    n, c = x.shape[:2]
    block_p, block_c, chunks, warps = block_config(c, resample=True)
    grid = (triton.cdiv(rs.pixels, block_p), n)
    partial = torch.zeros(grid[0] * grid[1], device=x.device, dtype=torch.float32)
    if x.numel() > 0 and rs.pixels > 0:
        launch(
            sumsq_kernel,
            grid,
            x,
            partial,
            c,
            rs.pixels,
            rs.out_w,
            *x.stride(),
            chunks,
            *rs.args(),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=warps,
        )
    return partial.double().sum()


def logit_scale(decoder: torch.Tensor, sgc: torch.Tensor, size=None, align_corners: bool = False) -> torch.Tensor:
    """1 / sqrt(mean(v^2) + 1e-8) over both tensors: two fp32 norm reductions, no host sync. With
    ``size``, over the values interpolated to it (count N * C * H * W per tensor)."""
    if size is not None:
        rs = Resampling(decoder, size, align_corners)
        n, c = decoder.shape[:2]
        count = 2 * n * c * rs.pixels
        sumsq = _sumsq_resampled(decoder, rs) + _sumsq_resampled(sgc, rs)
        return torch.rsqrt(sumsq / max(count, 1) + 1e-8).float()
    count = decoder.numel() + sgc.numel()
    acc = torch.float64 if decoder.dtype == torch.float64 else torch.float32
    sumsq = torch.linalg.vector_norm(decoder, dtype=acc).square() + torch.linalg.vector_norm(sgc, dtype=acc).square()
    return torch.rsqrt(sumsq / max(count, 1) + 1e-8).float()


@triton.jit
def _target(p, m, mp, mm, wp, wm, scale, inv_t, SHARPEN: tl.constexpr):
    """Unnormalised sharpened target r = q^(1/T) of one chunk (0 for padding classes)."""
    ep = tl.where(p == float("-inf"), 0.0, tl.exp((p - mp[:, None]) * scale))
    em = tl.where(m == float("-inf"), 0.0, tl.exp((m - mm[:, None]) * scale))
    q = wp[:, None] * ep + wm[:, None] * em
    if SHARPEN == 1:
        r = q * q
    elif SHARPEN == 2:
        r = tl.where(q > 0.0, tl.exp(tl.log(tl.where(q > 0.0, q, 1.0)) * inv_t), 0.0)
    else:
        r = q
    return r


@triton.jit
def _chunk(
    p_base,
    m_base,
    z_base,
    src_p,
    src_m,
    src_z,
    pmask,
    k,
    C,
    spC,
    smC,
    szC,
    mp,
    mm,
    wp,
    wm,
    scale,
    inv_t,
    SHARPEN: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Chunk k: the unnormalised target r, the student logits z and the class indices."""
    pk, c = load_src(p_base, src_p, pmask, k, C, spC, BLOCK_C)
    mk, _c = load_src(m_base, src_m, pmask, k, C, smC, BLOCK_C)
    zk, _c2 = load_src(z_base, src_z, pmask, k, C, szC, BLOCK_C)
    return _target(pk, mk, mp, mm, wp, wm, scale, inv_t, SHARPEN), zk, c


@triton.jit
def _fold_target(r, c, z, mz, R, rmax, y, rz):
    """Folds one chunk into sum r, max r, first argmax r and sum r (z - max z)."""
    cmax = tl.max(r, axis=1)
    cidx = tl.min(tl.where(r == cmax[:, None], c[None, :], 2147483647), axis=1).to(tl.int32)
    take = cmax > rmax
    y = tl.where(take, cidx, y)
    rmax = tl.maximum(rmax, cmax)
    R += tl.sum(r, axis=1)
    rz += tl.sum(tl.where(r > 0.0, r * (z - mz[:, None]), 0.0), axis=1)
    return R, rmax, y, rz


@triton.jit
def pseudoseg_kernel(
    z_ptr,
    p_ptr,
    m_ptr,
    mask_ptr,
    g_ptr,
    partial_ptr,
    count_ptr,
    gscale_ptr,
    scale_ptr,
    C,
    HW,
    W,
    gamma,
    inv_t,
    threshold,
    num_chunks,
    szN,
    szC,
    szH,
    szW,
    spN,
    spC,
    spH,
    spW,
    smN,
    smC,
    smH,
    smW,
    skN,
    skH,
    skW,
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
    NEED_GRAD: tl.constexpr,
    SOFT: tl.constexpr,
    SHARPEN: tl.constexpr,
    USE_THRESHOLD: tl.constexpr,
    FLAT_Z: tl.constexpr,
    FLAT_P: tl.constexpr,
    FLAT_M: tl.constexpr,
    FLAT_K: tl.constexpr,
    FLAT_G: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    valid = pmask
    if HAS_MASK:  # bool ignore mask: True = ignored
        mv = tl.load(mask_ptr + n * skN + pixel_offsets(hw, W, skH, skW, FLAT_K), mask=pmask, other=1)
        valid = valid & (mv == 0)
    scale = tl.load(scale_ptr)
    zero = tl.zeros((BLOCK_P,), tl.int32)
    p_base = p_ptr + n * spN
    m_base = m_ptr + n * smN
    z_base = z_ptr + n * szN
    src_p = source(hw, W, spH, spW, FLAT_P, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    src_m = source(hw, W, smH, smW, FLAT_M, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    src_z = source(hw, W, szH, szW, FLAT_Z, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE)
    mp, sp, _r0, _t0, _i0, _x0, p_t = row_stats(
        p_base, src_p, pmask, zero, C, spC, scale, num_chunks, False, False, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    mm, sm, _r1, _t1, _i1, _x1, m_t = row_stats(
        m_base, src_m, pmask, zero, C, smC, scale, num_chunks, False, False, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    mz, sz, _r2, _t2, _i2, _x2, z_t = row_stats(
        z_base, src_z, pmask, zero, C, szC, 1.0, num_chunks, False, False, BLOCK_P, BLOCK_C, SINGLE_CHUNK
    )
    wp = gamma / sp
    wm = (1.0 - gamma) / sm
    R = tl.zeros((BLOCK_P,), tl.float32)
    rz = tl.zeros((BLOCK_P,), tl.float32)
    rmax = tl.full((BLOCK_P,), -1.0, tl.float32)
    y = tl.zeros((BLOCK_P,), tl.int32)
    if SINGLE_CHUNK:
        c = tl.arange(0, BLOCK_C)
        r_t = _target(p_t, m_t, mp, mm, wp, wm, scale, inv_t, SHARPEN)
        R, rmax, y, rz = _fold_target(r_t, c, z_t, mz, R, rmax, y, rz)
    else:
        for k in range(num_chunks):
            rk, zk, c = _chunk(
                p_base,
                m_base,
                z_base,
                src_p,
                src_m,
                src_z,
                pmask,
                k,
                C,
                spC,
                smC,
                szC,
                mp,
                mm,
                wp,
                wm,
                scale,
                inv_t,
                SHARPEN,
                BLOCK_C,
            )
            R, rmax, y, rz = _fold_target(rk, c, zk, mz, R, rmax, y, rz)
    inv_r = 1.0 / R
    active = valid
    if USE_THRESHOLD:
        active = active & (rmax * inv_r >= threshold)
    act = tl.where(active, 1.0, 0.0)
    if SOFT:
        loss = tl.log(sz) - rz * inv_r
        rest = sz
    else:
        zy = tl.zeros((BLOCK_P,), tl.float32)
        rest = tl.zeros((BLOCK_P,), tl.float32)
        if SINGLE_CHUNK:
            c = tl.arange(0, BLOCK_C)
            is_y = c[None, :] == y[:, None]
            zy = tl.sum(tl.where(is_y, z_t, 0.0), axis=1)
            rest = tl.sum(tl.where(is_y | (z_t == float("-inf")), 0.0, tl.exp(z_t - mz[:, None])), axis=1)
        else:
            for k in range(num_chunks):
                zk, c = load_src(z_base, src_z, pmask, k, C, szC, BLOCK_C)
                is_y = c[None, :] == y[:, None]
                zy += tl.sum(tl.where(is_y, zk, 0.0), axis=1)
                rest += tl.sum(tl.where(is_y | (zk == float("-inf")), 0.0, tl.exp(zk - mz[:, None])), axis=1)
        loss = ce_from_stats(mz, sz, rest, zy)
    ce = tl.where(active, loss, 0.0)
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(partial_ptr + pid, tl.sum(ce, axis=0))
    tl.store(count_ptr + pid, tl.sum(act, axis=0).to(tl.int32))
    if NEED_GRAD:
        gscale = tl.load(gscale_ptr)
        gs = tl.where(active, gscale / sz, 0.0)
        gt = tl.where(active, gscale * inv_r, 0.0)
        g_base = g_ptr + n * sgN
        dst_g = source(hw, W, sgH, sgW, FLAT_G, ridx_ptr, rw_ptr, Ho, pmask, SCATTER)
        if SINGLE_CHUNK:
            _store_grad(g_base, dst_g, pmask, tl.arange(0, BLOCK_C), z_t, r_t, mz, y, gs, gt, rest, C, sgC, SOFT)
        else:
            for k in range(num_chunks):
                rk, zk, c = _chunk(
                    p_base,
                    m_base,
                    z_base,
                    src_p,
                    src_m,
                    src_z,
                    pmask,
                    k,
                    C,
                    spC,
                    smC,
                    szC,
                    mp,
                    mm,
                    wp,
                    wm,
                    scale,
                    inv_t,
                    SHARPEN,
                    BLOCK_C,
                )
                _store_grad(g_base, dst_g, pmask, c, zk, rk, mz, y, gs, gt, rest, C, sgC, SOFT)


@triton.jit
def _store_grad(g_base, dst_g, pmask, c, z, r, mz, y, gs, gt, rest, C, sgC, SOFT: tl.constexpr):
    e = tl.where(z == float("-inf"), 0.0, tl.exp(z - mz[:, None]))
    if SOFT:
        g = gs[:, None] * e - gt[:, None] * r
    else:
        g = tl.where(c[None, :] == y[:, None], -(gs * rest)[:, None], gs[:, None] * e)
    g = tl.where(gs[:, None] == 0.0, 0.0, g)  # inactive pixels: 0 even for non-finite logits
    store_dst(g_base, dst_g, pmask, g, c, C, sgC)


def pseudoseg_loss(
    student,
    decoder,
    sgc,
    ignore_mask,
    scale,
    gamma,
    temperature,
    threshold,
    soft,
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
    block_p, block_c, chunks, warps = block_config(c, CHUNK_CLASSES["pseudoseg_kernel"], resample=rs.on)
    grid = (triton.cdiv(h * w, block_p), n)
    partial = torch.zeros(grid[0] * grid[1], device=dev, dtype=torch.float32)
    counts = torch.zeros(grid[0] * grid[1], device=dev, dtype=torch.int32)
    mean = MaskedMean(ignore_mask, 255, n * h * w, norm_mode, norm_value, dev)
    grad = saved_grad_buffer(student, need_grad)
    inv_t = 1.0 / temperature
    if n * h * w == 0:
        grad.zero_()
    else:
        mask = ignore_mask if ignore_mask is not None else partial
        g = rs.grad_target(grad, need_grad) if need_grad else student
        k_strides = ignore_mask.stride() if ignore_mask is not None else (0, 0, 0)
        launch(
            pseudoseg_kernel,
            grid,
            student,
            decoder,
            sgc,
            mask,
            g,
            partial,
            counts,
            mean.inv,
            scale,
            c,
            h * w,
            w,
            float(gamma),
            inv_t,
            float(threshold),
            chunks,
            *student.stride(),
            *decoder.stride(),
            *sgc.stride(),
            *k_strides,
            *g.stride(),
            *rs.args(),
            RESAMPLE=rs.on,
            SCATTER=rs.scatter(),
            HAS_MASK=ignore_mask is not None,
            NEED_GRAD=need_grad,
            SOFT=soft,
            SHARPEN=_SQUARE if inv_t == 2.0 else _IDENTITY if inv_t == 1.0 else _POWER,
            USE_THRESHOLD=threshold > 0,
            FLAT_Z=flat_pixels(h0, w0, student.stride(2), student.stride(3)),
            FLAT_P=flat_pixels(h0, w0, decoder.stride(2), decoder.stride(3)),
            FLAT_M=flat_pixels(h0, w0, sgc.stride(2), sgc.stride(3)),
            FLAT_K=flat_pixels(h, w, k_strides[1], k_strides[2]),
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
