"""Triton kernels of photometric_loss: the errors, minimum and winner's derivatives per pixel in one
kernel; the gradient of each warped source, gathered from the 3x3 windows that hold each pixel, in a
second. Same numerics and rules as the C++ kernel (csrc/common/kernels_impl.h)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch

BLOCK = 256
PIXEL_NAN = 1 << 30  # flags: the pixel's loss is NaN; bit 3 s + c: source s's channel c error is NaN


@triton.jit
def _reflect(i, n):
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= n, 2 * (n - 1) - i, i)


@triton.jit
def _nan(like):
    """A NaN per element of ``like`` (from its bits: no 0 / 0 to warn about in the interpreter)."""
    return tl.full(like.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _ssim(mx, my, xx, yy, xy):
    """(clamp((1 - SSIM) / 2, 0, 1), d/d mean x, d/d mean x^2, d/d mean xy), as the C++ kernel."""
    a1 = 2.0 * mx * my + 0.0001
    a2 = 2.0 * (xy - mx * my) + 0.0009
    b1 = mx * mx + my * my + 0.0001
    b2 = (xx - mx * mx) + (yy - my * my) + 0.0009
    num = a1 * a2
    den = b1 * b2
    e = (1.0 - num / den) * 0.5
    inside = tl.where((e >= 0.0) & (e <= 1.0), -0.5, 0.0)
    inv = 1.0 / den
    sod = num * inv * inv
    d0 = inside * (2.0 * my * (a2 - a1) * inv - sod * 2.0 * mx * (b2 - b1))
    d1 = inside * (-sod * b1)
    d2 = inside * (2.0 * a1 * inv)
    clamped = tl.minimum(tl.maximum(e, 0.0), 1.0)
    return tl.where(e != e, e, clamped), d0, d1, d2


@triton.jit
def _means(x_ptr, y_ptr, xo, yo, xsH, xsW, ysH, ysW, i, j, H, W, pmask):
    """The 3x3 means of x, y, x^2, y^2 and xy at pixels (i, j) over reflected rows and columns;
    xo, yo: the offsets of the channel planes."""
    sx = tl.zeros(i.shape, dtype=tl.float32)
    sy = tl.zeros(i.shape, dtype=tl.float32)
    sxx = tl.zeros(i.shape, dtype=tl.float32)
    syy = tl.zeros(i.shape, dtype=tl.float32)
    sxy = tl.zeros(i.shape, dtype=tl.float32)
    for di in tl.static_range(3):
        r = _reflect(i + (di - 1), H)
        for dj in tl.static_range(3):
            c = _reflect(j + (dj - 1), W)
            a = tl.load(x_ptr + xo + r * xsH + c * xsW, mask=pmask, other=0.0).to(tl.float32)
            b = tl.load(y_ptr + yo + r * ysH + c * ysW, mask=pmask, other=0.0).to(tl.float32)
            sx += a
            sy += b
            sxx += a * a
            syy += b * b
            sxy += a * b
    k = 1.0 / 9.0
    return sx * k, sy * k, sxx * k, syy * k, sxy * k


@triton.jit
def photometric_kernel(
    t_ptr, w_ptr, id_ptr, coef_ptr, win_ptr, flag_ptr, partial_ptr,
    H, W, tsN, tsC, tsH, tsW, wsS, wsN, wsC, wsH, wsW, isS, isN, isC, isH, isW,
    alpha,
    S: tl.constexpr, HAS_IDENTITY: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per pixel: each source's error, the minimum (a warped source wins ties in order, identity
    only when strictly lower), the winner, the NaN flags and (NEED_GRAD) the winner's derivatives
    per channel (coef: (N, 3 channels, 3, H, W)); the block's sum of pixel losses."""
    pid, n = tl.program_id(0), tl.program_id(1)
    hw = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < H * W
    i, j = hw // W, hw % W
    alpha3 = alpha / 3.0
    l1_3 = (1.0 - alpha) / 3.0
    best = tl.zeros((BLOCK_P,), dtype=tl.float32)
    win = tl.full((BLOCK_P,), -1, dtype=tl.int32)
    flags = tl.zeros((BLOCK_P,), dtype=tl.int32)
    c00 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    c01, c02, c10, c11, c12, c20, c21, c22 = c00, c00, c00, c00, c00, c00, c00, c00
    t_base = n * tsN
    for s in tl.static_range(S):
        w_base = s * wsS + n * wsN
        err = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for c in tl.static_range(3):
            w_off, t_off = w_base + c * wsC, t_base + c * tsC
            mx, my, xx, yy, xy = _means(w_ptr, t_ptr, w_off, t_off, wsH, wsW, tsH, tsW, i, j, H, W, pmask)
            e, d0, d1, d2 = _ssim(mx, my, xx, yy, xy)
            xc = tl.load(w_ptr + w_off + i * wsH + j * wsW, mask=pmask, other=0.0).to(tl.float32)
            yc = tl.load(t_ptr + t_off + i * tsH + j * tsW, mask=pmask, other=0.0).to(tl.float32)
            err += alpha3 * e + l1_3 * tl.abs(yc - xc)
            flags |= tl.where(e != e, 1 << (3 * s + c), 0)
            if c == 0:
                e0, e1, e2 = d0, d1, d2
            elif c == 1:
                f0, f1, f2 = d0, d1, d2
            else:
                g0, g1, g2 = d0, d1, d2
        if s == 0:
            take = pmask | True
        else:
            take = err < best
        best = tl.where(take, err, best)
        win = tl.where(take, s, win)
        flags |= tl.where(err != err, PIXEL_NAN, 0)
        if NEED_GRAD:
            c00, c01, c02 = tl.where(take, e0, c00), tl.where(take, e1, c01), tl.where(take, e2, c02)
            c10, c11, c12 = tl.where(take, f0, c10), tl.where(take, f1, c11), tl.where(take, f2, c12)
            c20, c21, c22 = tl.where(take, g0, c20), tl.where(take, g1, c21), tl.where(take, g2, c22)
    if HAS_IDENTITY:
        for s in tl.static_range(S):
            id_base = s * isS + n * isN
            err = tl.zeros((BLOCK_P,), dtype=tl.float32)
            for c in tl.static_range(3):
                i_off, t_off = id_base + c * isC, t_base + c * tsC
                mx, my, xx, yy, xy = _means(id_ptr, t_ptr, i_off, t_off, isH, isW, tsH, tsW, i, j, H, W, pmask)
                e, _d0, _d1, _d2 = _ssim(mx, my, xx, yy, xy)
                xc = tl.load(id_ptr + i_off + i * isH + j * isW, mask=pmask, other=0.0).to(tl.float32)
                yc = tl.load(t_ptr + t_off + i * tsH + j * tsW, mask=pmask, other=0.0).to(tl.float32)
                err += alpha3 * e + l1_3 * tl.abs(yc - xc)
            take = err < best
            best = tl.where(take, err, best)
            win = tl.where(take, -1, win)
            flags |= tl.where(err != err, PIXEL_NAN, 0)
    nan = (flags & PIXEL_NAN) != 0
    best = tl.where(nan, _nan(best), best)
    win = tl.where(nan, -1, win)
    out = n * H * W + hw
    tl.store(win_ptr + out, win.to(tl.int8), mask=pmask)
    tl.store(partial_ptr + n * tl.num_programs(0) + pid, tl.sum(tl.where(pmask, best, 0.0), axis=0))
    if NEED_GRAD:
        tl.store(flag_ptr + out, flags, mask=pmask)
        plane = H * W
        base = n * 9 * plane + hw
        tl.store(coef_ptr + base + 0 * plane, c00, mask=pmask)
        tl.store(coef_ptr + base + 1 * plane, c01, mask=pmask)
        tl.store(coef_ptr + base + 2 * plane, c02, mask=pmask)
        tl.store(coef_ptr + base + 3 * plane, c10, mask=pmask)
        tl.store(coef_ptr + base + 4 * plane, c11, mask=pmask)
        tl.store(coef_ptr + base + 5 * plane, c12, mask=pmask)
        tl.store(coef_ptr + base + 6 * plane, c20, mask=pmask)
        tl.store(coef_ptr + base + 7 * plane, c21, mask=pmask)
        tl.store(coef_ptr + base + 8 * plane, c22, mask=pmask)


@triton.jit
def _count(p, q, n):
    """How often q occurs in the reflected 3-tap window of p."""
    return (_reflect(p - 1, n) == q).to(tl.float32) + (p == q).to(tl.float32) + (_reflect(p + 1, n) == q).to(tl.float32)


@triton.jit
def photometric_grad_kernel(
    t_ptr, w_ptr, coef_ptr, win_ptr, flag_ptr, g_ptr,
    H, W, tsN, tsC, tsH, tsW, wsS, wsN, wsC, wsH, wsW,
    alpha, grad_scale,
    S: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """d loss / d warped (S, N, 3, H, W), fp32 contiguous: at pixel q of source s, the derivatives
    of the pixels p whose window holds q and that s won (times how often q occurs there; NaN where
    s's own error at p is NaN), through the 3x3 means, plus the L1 term where s won q; NaN at a
    pixel whose loss is NaN."""
    pid, n = tl.program_id(0), tl.program_id(1)
    hw = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < H * W
    i, j = hw // W, hw % W
    plane = H * W
    ks = grad_scale * alpha / 3.0 / 9.0
    kl = grad_scale * (1.0 - alpha) / 3.0
    win_q = tl.load(win_ptr + n * plane + hw, mask=pmask, other=-1).to(tl.int32)
    flag_q = tl.load(flag_ptr + n * plane + hw, mask=pmask, other=0)
    zero = tl.zeros((BLOCK_P,), dtype=tl.float32)
    nan = _nan(zero)
    for s in tl.static_range(S):
        for c in tl.static_range(3):
            a0 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            a1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            a2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            for di in tl.static_range(3):
                pi = i + (di - 1)
                for dj in tl.static_range(3):
                    pj = j + (dj - 1)
                    inside = pmask & (pi >= 0) & (pi < H) & (pj >= 0) & (pj < W)
                    m = _count(pi, i, H) * _count(pj, j, W)
                    p = n * plane + pi * W + pj
                    wp = tl.load(win_ptr + p, mask=inside, other=-1).to(tl.int32)
                    fp = tl.load(flag_ptr + p, mask=inside, other=0)
                    cp = coef_ptr + n * 9 * plane + (3 * c) * plane + pi * W + pj
                    mine = inside & (wp == s)
                    poison = tl.where(inside & ((fp & (1 << (3 * s + c))) != 0), nan, zero)
                    a0 += m * tl.where(mine, tl.load(cp, mask=mine, other=0.0), 0.0) + poison
                    a1 += m * tl.where(mine, tl.load(cp + plane, mask=mine, other=0.0), 0.0) + poison
                    a2 += m * tl.where(mine, tl.load(cp + 2 * plane, mask=mine, other=0.0), 0.0) + poison
            xq = tl.load(w_ptr + s * wsS + n * wsN + c * wsC + i * wsH + j * wsW, mask=pmask, other=0.0)
            xq = xq.to(tl.float32)
            yq = tl.load(t_ptr + n * tsN + c * tsC + i * tsH + j * tsW, mask=pmask, other=0.0).to(tl.float32)
            diff = xq - yq
            sign = (diff > 0.0).to(tl.float32) - (diff < 0.0).to(tl.float32)
            g = ks * (a0 + 2.0 * xq * a1 + yq * a2) + tl.where(win_q == s, kl * sign, 0.0)
            g = tl.where((flag_q & PIXEL_NAN) != 0, nan, g)
            tl.store(g_ptr + ((s * tl.num_programs(1) + n) * 3 + c) * plane + hw, g, mask=pmask)


def photometric(target, warped, identity, ssim_weight, need_grad):
    """(loss, winner (N, H, W) int8, d loss / d warped in fp32 or an empty tensor), as the C++ op."""
    S, N, _, H, W = warped.shape
    blocks = triton.cdiv(H * W, BLOCK)
    dev = target.device
    win = torch.empty((N, H, W), dtype=torch.int8, device=dev)
    partial = torch.empty((N, blocks), dtype=torch.float32, device=dev)
    flags = torch.empty((N, H, W) if need_grad else (1,), dtype=torch.int32, device=dev)
    coef = torch.empty((N, 9, H, W) if need_grad else (1,), dtype=torch.float32, device=dev)
    ident = identity if identity is not None else warped
    launch(
        photometric_kernel, (blocks, N),
        target, warped, ident, coef, win, flags, partial,
        H, W, *target.stride(), *warped.stride(), *ident.stride(),
        float(ssim_weight),
        S=S, HAS_IDENTITY=identity is not None, NEED_GRAD=need_grad, BLOCK_P=BLOCK,
    )  # fmt: skip
    pixels = N * H * W
    loss = (partial.double().sum() / pixels).float() if pixels else partial.new_zeros(())
    if not need_grad:
        return loss, win, torch.empty((0,), dtype=torch.float32, device=dev)
    grad = torch.empty(warped.shape, dtype=torch.float32, device=dev)
    launch(
        photometric_grad_kernel, (blocks, N),
        target, warped, coef, win, flags, grad,
        H, W, *target.stride(), *warped.stride(),
        float(ssim_weight), 1.0 / pixels,
        S=S, BLOCK_P=BLOCK,
    )  # fmt: skip
    return loss, win, grad
