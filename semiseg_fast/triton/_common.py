"""Pieces shared by the Triton kernels.

A program owns BLOCK_P consecutive pixels of one image (grid = (pixel blocks, N)) and all C
classes, read in NUM_CHUNKS chunks of BLOCK_C. With one chunk (C <= 256, the usual case) the
tile stays in registers between the statistics and the gradient; with more, statistics are
accumulated online (running max, rescaled sums) and the gradient pass reads the chunks again.

Numerics match the C++ kernels: fp32 math, and the probability mass outside the argmax /
target class (``rest``) is accumulated directly so confident pixels keep full precision.
"""
from __future__ import annotations

import triton
import triton.language as tl

MAX_BLOCK_C = 256
TILE_ELEMS = 4096


def block_config(num_classes: int) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_C, NUM_CHUNKS, num_warps) for C classes."""
    block_c = min(triton.next_power_of_2(num_classes), MAX_BLOCK_C)
    num_chunks = triton.cdiv(num_classes, block_c)
    block_p = max(16, TILE_ELEMS // block_c)
    return block_p, block_c, num_chunks, 4


def flat_pixels(h: int, w: int, s_h: int, s_w: int) -> bool:
    """True when pixel (h, w) sits at (h * W + w) * s_w, so one multiply addresses it."""
    return h == 1 or s_h == w * s_w


@triton.jit
def pixel_offsets(hw, W, sH, sW, FLAT: tl.constexpr):
    """Element offsets of flat pixel indices hw within one image."""
    if FLAT:
        return hw.to(tl.int64) * sW
    return (hw // W).to(tl.int64) * sH + (hw % W).to(tl.int64) * sW


@triton.jit
def load_chunk(base, poff, pmask, k, C, sC, BLOCK_C: tl.constexpr):
    """Classes [k*BLOCK_C, (k+1)*BLOCK_C) of BLOCK_P pixels as fp32; missing classes are -inf."""
    c = k * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    x = tl.load(base + poff[:, None] + c[None, :].to(tl.int64) * sC, mask=pmask[:, None] & cmask[None, :], other=0.0)
    return tl.where(cmask[None, :], x.to(tl.float32), float("-inf")), c


@triton.jit
def log1p_pos(r):
    """log(1 + r) for r >= 0, exact for tiny r (log of the rounded sum, corrected)."""
    u = 1.0 + r
    d = u - 1.0
    return tl.where(d == 0.0, r, tl.log(u) * (r / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def row_stats(base, poff, pmask, y, C, sC, inv_t,
              USE_Y: tl.constexpr, NEED_T: tl.constexpr,
              BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, NUM_CHUNKS: tl.constexpr):
    """Softmax statistics of softmax(x * inv_t) over classes, per pixel.

    Returns (m, s, rest, t, idx, xy, x_last):
      m     max_c x_c (untempered);  s = sum_c exp((x_c - m) inv_t)
      rest  sum of the exp terms except class y (USE_Y) or except the first argmax
      t     sum_c e_c (x_c - m) inv_t (NEED_T), for the entropy log1p(rest) - t / s
      idx   first argmax;  xy = x_y (USE_Y)
      x_last  the last chunk's logits (the whole row when NUM_CHUNKS == 1)
    """
    m = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_P,), tl.float32)
    rest = tl.zeros((BLOCK_P,), tl.float32)
    t = tl.zeros((BLOCK_P,), tl.float32)
    xy = tl.zeros((BLOCK_P,), tl.float32)
    idx = tl.zeros((BLOCK_P,), tl.int32)
    x = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for k in tl.static_range(NUM_CHUNKS):
        x, c = load_chunk(base, poff, pmask, k, C, sC, BLOCK_C)
        cmax = tl.max(x, axis=1)
        cidx = tl.argmax(x, axis=1, tie_break_left=True).to(tl.int32) + k * BLOCK_C
        take = cmax > m
        new_m = tl.maximum(m, cmax)
        if k == 0:
            alpha = tl.zeros((BLOCK_P,), tl.float32)
            shift = tl.zeros((BLOCK_P,), tl.float32)
        else:
            shift = (m - new_m) * inv_t
            alpha = tl.exp(shift)
        d = (x - new_m[:, None]) * inv_t
        e = tl.where(x == float("-inf"), 0.0, tl.exp(d))
        if USE_Y:
            is_y = c[None, :] == y[:, None]
            xy += tl.sum(tl.where(is_y, x, 0.0), axis=1)
            rest = rest * alpha + tl.sum(tl.where(is_y, 0.0, e), axis=1)
        else:
            others = tl.sum(tl.where(c[None, :] == cidx[:, None], 0.0, e), axis=1)
            rest = tl.where(take, (rest + 1.0) * alpha + others, rest * alpha + tl.sum(e, axis=1))
        if NEED_T:
            t = alpha * (t + shift * s) + tl.sum(e * tl.where(x == float("-inf"), 0.0, d), axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        idx = tl.where(take, cidx, idx)
        m = new_m
    return m, s, rest, t, idx, xy, x


@triton.jit
def ce_from_stats(m, s, rest, xy):
    """lse - x_y, as log1p(rest) when the target is the max (confident pixels), else m - x_y + log s."""
    return tl.where(xy == m, log1p_pos(rest), (m - xy) + tl.log(s))


@triton.jit
def store_grad(base_x, base_g, poff_x, poff_g, pmask, x_last, m, y, scale, rest, C, sCx, sCg,
               BLOCK_C: tl.constexpr, NUM_CHUNKS: tl.constexpr):
    """g_c = scale * p_c for c != y and -scale * rest / s for c = y (scale already holds 1/s)."""
    for k in tl.static_range(NUM_CHUNKS):
        if NUM_CHUNKS == 1:
            x = x_last
            c = tl.arange(0, BLOCK_C)
        else:
            x, c = load_chunk(base_x, poff_x, pmask, k, C, sCx, BLOCK_C)
        e = tl.where(x == float("-inf"), 0.0, tl.exp(x - m[:, None]))
        g = tl.where(c[None, :] == y[:, None], -(scale * rest)[:, None], scale[:, None] * e)
        cmask = c < C
        ptr = base_g + poff_g[:, None] + c[None, :].to(tl.int64) * sCg
        tl.store(ptr, g.to(base_g.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])
