"""Triton kernels of photometric_loss: the errors, minimum and winner's derivatives per pixel in one
kernel; the gradient of each warped source, gathered from the 3x3 windows that hold each pixel, in a
second. Same numerics and rules as the C++ kernel (csrc/common/kernels_impl.h)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch

BLOCK = 128  # 1 pixel per thread at 4 warps


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
    xo, yo: the offsets of the channel planes. Runtime loops: unrolled, the taps' loads and sums
    took 140-255 registers."""
    sx = tl.zeros(i.shape, dtype=tl.float32)
    sy = tl.zeros(i.shape, dtype=tl.float32)
    sxx = tl.zeros(i.shape, dtype=tl.float32)
    syy = tl.zeros(i.shape, dtype=tl.float32)
    sxy = tl.zeros(i.shape, dtype=tl.float32)
    for di in range(3):
        r = _reflect(i + (di - 1), H)
        for dj in range(3):
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
def _error(
    x_ptr, t_ptr, xo, to, xsC, xsH, xsW, tsC, tsH, tsW, i, j, H, W, pmask, alpha, coef_ptr, NEED_GRAD: tl.constexpr
):
    """One source's error per pixel; with NEED_GRAD its SSIM derivatives per channel written to
    coef_ptr + (3 c + k) * H * W (k: mean x, x^2, xy)."""
    err = tl.zeros(i.shape, dtype=tl.float32)
    plane = H * W
    for c in range(3):
        x_off, t_off = xo + c * xsC, to + c * tsC
        mx, my, xx, yy, xy = _means(x_ptr, t_ptr, x_off, t_off, xsH, xsW, tsH, tsW, i, j, H, W, pmask)
        e, d0, d1, d2 = _ssim(mx, my, xx, yy, xy)
        xc = tl.load(x_ptr + x_off + i * xsH + j * xsW, mask=pmask, other=0.0).to(tl.float32)
        yc = tl.load(t_ptr + t_off + i * tsH + j * tsW, mask=pmask, other=0.0).to(tl.float32)
        err += alpha / 3.0 * e + (1.0 - alpha) / 3.0 * tl.abs(yc - xc)
        if NEED_GRAD:
            hw = i * W + j
            tl.store(coef_ptr + (3 * c) * plane + hw, d0, mask=pmask)
            tl.store(coef_ptr + (3 * c + 1) * plane + hw, d1, mask=pmask)
            tl.store(coef_ptr + (3 * c + 2) * plane + hw, d2, mask=pmask)
    return err


@triton.jit
def photometric_kernel(
    t_ptr, w_ptr, id_ptr, coef_ptr, win_ptr, flag_ptr, partial_ptr,
    H, W, tsN, tsC, tsH, tsW, wsS, wsN, wsC, wsH, wsW, isS, isN, isC, isH, isW,
    alpha,
    S: tl.constexpr, HAS_IDENTITY: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Per pixel: each source's error, the minimum (a warped source wins ties in order, identity
    only when strictly lower), the winner, whether the loss is NaN and (NEED_GRAD) each warped
    source's SSIM derivatives (coef: (S, N, 9, H, W)); the block's sum of pixel losses."""
    pid, n = tl.program_id(0), tl.program_id(1)
    hw = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < H * W
    i, j = hw // W, hw % W
    plane = H * W
    N = tl.num_programs(1)
    best = tl.zeros((BLOCK_P,), dtype=tl.float32)
    win = tl.zeros((BLOCK_P,), dtype=tl.int32)
    nan = tl.zeros((BLOCK_P,), dtype=tl.int1)
    for s in tl.static_range(S):
        coef = coef_ptr + ((s * N + n) * 9) * plane
        err = _error(w_ptr, t_ptr, s * wsS + n * wsN, n * tsN, wsC, wsH, wsW, tsC, tsH, tsW, i, j, H, W, pmask,
                     alpha, coef, NEED_GRAD)  # fmt: skip
        if s == 0:
            best = err
        else:
            take = err < best
            best = tl.where(take, err, best)
            win = tl.where(take, s, win)
        nan = nan | (err != err)
    if HAS_IDENTITY:
        for s in tl.static_range(S):
            err = _error(id_ptr, t_ptr, s * isS + n * isN, n * tsN, isC, isH, isW, tsC, tsH, tsW, i, j, H, W, pmask,
                         alpha, coef_ptr, False)  # fmt: skip
            take = err < best
            best = tl.where(take, err, best)
            win = tl.where(take, -1, win)
            nan = nan | (err != err)
    best = tl.where(nan, _nan(best), best)
    win = tl.where(nan, -1, win)
    tl.store(win_ptr + n * plane + hw, win.to(tl.int8), mask=pmask)
    tl.store(flag_ptr + n * plane + hw, nan.to(tl.int8), mask=pmask)
    tl.store(partial_ptr + n * tl.num_programs(0) + pid, tl.sum(tl.where(pmask, best, 0.0), axis=0))


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
    of the pixels p whose window holds q, times how often q occurs there, where s won p (0 times
    them elsewhere, NaN where they are NaN, as autograd), through the 3x3 means; plus the L1 term
    where s won q; NaN at a pixel whose loss is NaN."""
    pid, n = tl.program_id(0), tl.program_id(1)
    hw = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < H * W
    i, j = hw // W, hw % W
    plane = H * W
    N = tl.num_programs(1)
    ks = grad_scale * alpha / 3.0 / 9.0
    kl = grad_scale * (1.0 - alpha) / 3.0
    win_q = tl.load(win_ptr + n * plane + hw, mask=pmask, other=-1).to(tl.int32)
    nan_q = tl.load(flag_ptr + n * plane + hw, mask=pmask, other=0) != 0
    for s in tl.static_range(S):
        coef = coef_ptr + ((s * N + n) * 9) * plane
        for c in range(3):
            a0 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            a1 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            a2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
            for di in range(3):
                pi = i + (di - 1)
                for dj in range(3):
                    pj = j + (dj - 1)
                    inside = pmask & (pi >= 0) & (pi < H) & (pj >= 0) & (pj < W)
                    m = _count(pi, i, H) * _count(pj, j, W)
                    p = pi * W + pj
                    wp = tl.load(win_ptr + n * plane + p, mask=inside, other=-1).to(tl.int32)
                    keep = m * (wp == s).to(tl.float32)  # 0 times a NaN stays NaN
                    cp = coef + (3 * c) * plane + p
                    a0 += tl.where(inside, keep * tl.load(cp, mask=inside, other=0.0), 0.0)
                    a1 += tl.where(inside, keep * tl.load(cp + plane, mask=inside, other=0.0), 0.0)
                    a2 += tl.where(inside, keep * tl.load(cp + 2 * plane, mask=inside, other=0.0), 0.0)
            xq = tl.load(w_ptr + s * wsS + n * wsN + c * wsC + i * wsH + j * wsW, mask=pmask, other=0.0)
            xq = xq.to(tl.float32)
            yq = tl.load(t_ptr + n * tsN + c * tsC + i * tsH + j * tsW, mask=pmask, other=0.0).to(tl.float32)
            diff = xq - yq
            sign = (diff > 0.0).to(tl.float32) - (diff < 0.0).to(tl.float32)
            g = ks * (a0 + 2.0 * xq * a1 + yq * a2) + tl.where(win_q == s, kl * sign, 0.0)
            g = tl.where(nan_q, _nan(g), g)
            tl.store(g_ptr + ((s * N + n) * 3 + c) * plane + hw, g, mask=pmask)


def photometric(target, warped, identity, ssim_weight, need_grad):
    """(loss, winner (N, H, W) int8, d loss / d warped in fp32 or an empty tensor), as the C++ op."""
    S, N, _, H, W = warped.shape
    blocks = triton.cdiv(H * W, BLOCK)
    dev = target.device
    win = torch.empty((N, H, W), dtype=torch.int8, device=dev)
    nan = torch.empty((N, H, W), dtype=torch.int8, device=dev)
    partial = torch.empty((N, blocks), dtype=torch.float32, device=dev)
    coef = torch.empty((S, N, 9, H, W) if need_grad else (1,), dtype=torch.float32, device=dev)
    ident = identity if identity is not None else warped
    launch(
        photometric_kernel, (blocks, N),
        target, warped, ident, coef, win, nan, partial,
        H, W, *target.stride(), *warped.stride(), *ident.stride(),
        float(ssim_weight),
        S=S, HAS_IDENTITY=identity is not None, NEED_GRAD=need_grad, BLOCK_P=BLOCK, num_warps=4,
    )  # fmt: skip
    pixels = N * H * W
    loss = (partial.double().sum() / pixels).float() if pixels else partial.new_zeros(())
    if not need_grad:
        return loss, win, torch.empty((0,), dtype=torch.float32, device=dev)
    grad = torch.empty(warped.shape, dtype=torch.float32, device=dev)
    launch(
        photometric_grad_kernel, (blocks, N),
        target, warped, coef, win, nan, grad,
        H, W, *target.stride(), *warped.stride(),
        float(ssim_weight), 1.0 / pixels,
        S=S, BLOCK_P=BLOCK, num_warps=4,
    )  # fmt: skip
    return loss, win, grad
