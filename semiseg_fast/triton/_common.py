"""Pieces shared by the Triton kernels.

A program owns BLOCK_P consecutive pixels of one image (grid = (pixel blocks, N)) and all C
classes, read in num_chunks chunks of BLOCK_C. With one chunk (C <= 64, the usual case;
SINGLE_CHUNK) the tile stays in registers between the statistics and the gradient; with more,
statistics are accumulated online (running max, rescaled sums) in a runtime loop, so every
class count above 64 shares one compiled kernel, and the gradient pass reads the chunks again.

Tiles hold 1024 elements, 4 per thread at 8 warps (see block_config for why).

With ``size=`` (see semiseg_fast.triton.resample) a program's pixels are output pixels of the
(H, W) map and the logits are read at the decoder's (h, w): every place that addresses logits takes
a *source* tuple instead of one offset vector: ``(poff,)`` reads a pixel as it is, the 8-tuple of
:func:`taps` interpolates its 4 bilinear neighbours in registers; the gradient's *destination* is
``(poff,)`` (a store) or taps (4 weighted atomic adds into the low-res buffer). The tuple's length
is static, so a kernel without ``size=`` compiles to the code it always had.

Numerics match the C++ kernels: fp32 math, and the probability mass outside the argmax /
target class (``rest``) is accumulated directly so confident pixels keep full precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base import Normalizer, inverse, not_ignored

MAX_BLOCK_C = 64
TILE_ELEMS = 1024

# When a list, launches are appended to it instead of run (see semiseg_fast.tools.gpu_check).
_recorded_launches = None


def launch(kernel, grid, *args, **kwargs) -> None:
    """Every kernel launch of the library goes through here, so that the ahead-of-time GPU check
    can compile exactly the specialisations the library uses."""
    if _recorded_launches is not None:
        _recorded_launches.append((kernel, tuple(grid), args, kwargs))
        return
    kernel[grid](*args, **kwargs)


def block_config(
    num_classes: int,
    chunk_classes: int = MAX_BLOCK_C,
    resample: bool = False,
    tile_elems: int = TILE_ELEMS,
    resampled_single_max: int = MAX_BLOCK_C,
) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_C, num_chunks, num_warps) for C classes.

    Tiles of 1024 elements at 8 warps, 4 elements per thread: one chunk up to 64 classes, else
    chunks of ``chunk_classes`` classes x 16 pixels. The AOT check (semiseg_fast.tools.gpu_check) found
    4096-element tiles at 150-255 registers per thread, and 8 elements per thread making ptxas
    spill predicate registers on sm_80.

    Kernels that read through bilinear taps (``resample``) get half the tile: each element's four
    neighbour addresses and weights took 1024-element tiles to 110-220 registers. A kernel that
    holds more per pixel asks for a smaller ``tile_elems``, and with ``resample`` may chunk from fewer
    classes (``resampled_single_max``): see KERNEL_TILES.
    """
    if num_classes <= (resampled_single_max if resample else MAX_BLOCK_C):
        block_c = triton.next_power_of_2(num_classes)
        if resample:
            return min(128, max(8, tile_elems // 2 // block_c)), block_c, 1, 8
        return max(16, tile_elems // block_c), block_c, 1, 8
    if resample:  # 32 classes x 8 pixels at the usual tile: 1 element per thread
        return tile_elems // 4 // 32, 32, triton.cdiv(num_classes, 32), 8
    return 16, chunk_classes, triton.cdiv(num_classes, chunk_classes), 8


# Chunk width of kernels whose chunk loops hold more than one tensor's chunk at a time.
CHUNK_CLASSES = {
    "pseudoseg_kernel": 32,  # three chunks per step: 64-class chunks took 110-122 registers
    "cps_kernel": 32,  # on half the tile (KERNEL_TILES): 32 classes x 16 pixels
}
# block_config's options of kernels that need smaller tiles. cps_kernel carries one network's targets
# and loss through the other's cross-entropy: at the usual tiles it took 83-91 registers for C <= 8
# in channels_last and 106-109 at C = 21 with size=; at half the tile, 106-112 at C = 64 with size=
# in one chunk, and the chunked path spilled on sm_80 at C = 150 with size=.
KERNEL_TILES = {"cps_kernel": {"tile_elems": TILE_ELEMS // 2, "resampled_single_max": 32}}


def flat_pixels(h: int, w: int, s_h: int, s_w: int) -> bool:
    """True when pixel (h, w) sits at (h * W + w) * s_w, so one multiply addresses it."""
    return h == 1 or s_h == w * s_w


class MaskedMean:
    """The denominator of a masked-mean loss (fixmatch, pseudoseg) on the device, without host syncs:
    ``inv`` (1 / denominator; 1 for "confident", known only after the kernel) scales the gradient in the
    kernel, then :meth:`finish` turns its per-program partials into (loss, mask ratio, scale still
    owed by the gradient)."""

    def __init__(
        self,
        ignore_mask,
        ignore_index: int,
        num_pixels: int,
        norm_mode: int,
        norm_value: float,
        device,
    ):
        self.device, self.norm_mode = device, norm_mode
        if ignore_mask is None:
            self.valid = torch.tensor(float(num_pixels), device=device)
        elif ignore_mask.dtype == torch.bool:
            self.valid = (~ignore_mask).sum().float()
        else:
            self.valid = not_ignored(ignore_mask, ignore_index).sum().float()
        if norm_mode == Normalizer.VALID:
            self.inv = inverse(self.valid)
        elif norm_mode == Normalizer.TOTAL:
            self.inv = inverse(torch.tensor(float(num_pixels), device=device))
        elif norm_mode == Normalizer.VALUE:
            self.inv = inverse(torch.tensor(float(norm_value), device=device))
        else:
            self.inv = torch.ones((), device=device)
        self.inv = self.inv.float()

    def finish(self, partial: torch.Tensor, counts: torch.Tensor):
        confident = counts.sum().float()
        inv = self.inv
        post = torch.ones((), device=self.device)
        if self.norm_mode == Normalizer.CONFIDENT:
            inv = post = inverse(confident)
        loss = (partial.double().sum() * inv).float()
        ratio = (confident.double() * inverse(self.valid.double())).float()
        return loss, ratio, post.float()


@triton.jit
def pixel_offsets(hw, W, sH, sW, FLAT: tl.constexpr):
    """Element offsets of flat pixel indices hw within one image."""
    if FLAT:
        return hw.to(tl.int64) * sW
    return (hw // W).to(tl.int64) * sH + (hw % W).to(tl.int64) * sW


@triton.jit
def taps(ridx_ptr, rw_ptr, hw, Ho, Wo, sH, sW, pmask):
    """Source tuple of output pixels hw of an (Ho, Wo) map read bilinearly from a tensor with pixel
    strides (sH, sW): (row offset 0, row offset 1, column offset 0, column offset 1, l0y, l1y, l0x,
    l1x). The tables (semiseg_fast.triton.resample.Resampling) hold i0y, i1y (Ho each), i0x, i1x (Wo
    each) and the weights in the same layout: torch's bilinear formula, computed once on the host."""
    oy = hw // Wo
    ox = hw % Wo
    r0 = tl.load(ridx_ptr + oy, mask=pmask, other=0).to(tl.int64) * sH
    r1 = tl.load(ridx_ptr + Ho + oy, mask=pmask, other=0).to(tl.int64) * sH
    c0 = tl.load(ridx_ptr + 2 * Ho + ox, mask=pmask, other=0).to(tl.int64) * sW
    c1 = tl.load(ridx_ptr + 2 * Ho + Wo + ox, mask=pmask, other=0).to(tl.int64) * sW
    l0y = tl.load(rw_ptr + oy, mask=pmask, other=0.0)
    l1y = tl.load(rw_ptr + Ho + oy, mask=pmask, other=0.0)
    l0x = tl.load(rw_ptr + 2 * Ho + ox, mask=pmask, other=0.0)
    l1x = tl.load(rw_ptr + 2 * Ho + Wo + ox, mask=pmask, other=0.0)
    return (r0, r1, c0, c1, l0y, l1y, l0x, l1x)


@triton.jit
def source(hw, W, sH, sW, FLAT: tl.constexpr, ridx_ptr, rw_ptr, Ho, pmask, RESAMPLE: tl.constexpr):
    """The source (or scatter destination) tuple of pixels hw: (pixel offsets,) or taps."""
    if RESAMPLE:
        return taps(ridx_ptr, rw_ptr, hw, Ho, W, sH, sW, pmask)
    else:
        return (pixel_offsets(hw, W, sH, sW, FLAT),)


@triton.jit
def _interpolate(base, src, m2, co):
    """(x00 l0x + x01 l1x) l0y + (x10 l0x + x11 l1x) l1y of the (pixels, classes) tile at
    class offsets co, in fp32."""
    r0 = src[0][:, None] + co
    r1 = src[1][:, None] + co
    c0 = src[2][:, None]
    c1 = src[3][:, None]
    l0x = src[6][:, None]
    l1x = src[7][:, None]
    top = tl.load(base + r0 + c0, mask=m2, other=0.0).to(tl.float32) * l0x
    top += tl.load(base + r0 + c1, mask=m2, other=0.0).to(tl.float32) * l1x
    bot = tl.load(base + r1 + c0, mask=m2, other=0.0).to(tl.float32) * l0x
    bot += tl.load(base + r1 + c1, mask=m2, other=0.0).to(tl.float32) * l1x
    return top * src[4][:, None] + bot * src[5][:, None]


@triton.jit
def load_src(base, src, pmask, k, C, sC, BLOCK_C: tl.constexpr):
    """:func:`load_chunk` through a source tuple."""
    if len(src) == 1:
        return load_chunk(base, src[0], pmask, k, C, sC, BLOCK_C)
    else:
        c = k * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        x = _interpolate(base, src, pmask[:, None] & cmask[None, :], c[None, :].to(tl.int64) * sC)
        return tl.where(cmask[None, :], x, float("-inf")), c


@triton.jit
def load_class(base, src, pmask, y, sC):
    """The fp32 logit of class y[p] of every pixel p, through a source tuple."""
    if len(src) == 1:
        return tl.load(base + src[0] + y.to(tl.int64) * sC, mask=pmask, other=0.0).to(tl.float32)
    else:
        x = _interpolate(base, src, pmask[:, None], y[:, None].to(tl.int64) * sC)
        return tl.sum(x, axis=1)


@triton.jit
def store_dst(base_g, dst, pmask, g, c, C, sCg):
    """Stores the fp32 gradient tile g (classes c) through a destination tuple: (offsets,) stores it in
    the buffer's dtype; taps scatter it to the 4 bilinear neighbours with atomic adds (the buffer is
    fp32 or fp64 and zeroed)."""
    m2 = pmask[:, None] & (c < C)[None, :]
    co = c[None, :].to(tl.int64) * sCg
    if len(dst) == 1:
        tl.store(base_g + dst[0][:, None] + co, g.to(base_g.dtype.element_ty), mask=m2)
    else:
        r0 = dst[0][:, None] + co
        r1 = dst[1][:, None] + co
        c0 = dst[2][:, None]
        c1 = dst[3][:, None]
        l0x = dst[6][:, None]
        l1x = dst[7][:, None]
        gt = g * dst[4][:, None]
        gb = g * dst[5][:, None]
        ty = base_g.dtype.element_ty
        tl.atomic_add(base_g + r0 + c0, (gt * l0x).to(ty), mask=m2, sem="relaxed")
        tl.atomic_add(base_g + r0 + c1, (gt * l1x).to(ty), mask=m2, sem="relaxed")
        tl.atomic_add(base_g + r1 + c0, (gb * l0x).to(ty), mask=m2, sem="relaxed")
        tl.atomic_add(base_g + r1 + c1, (gb * l1x).to(ty), mask=m2, sem="relaxed")


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
def _update_stats(x, c, y, m, s, rest, t, xy, idx, inv_t, USE_Y: tl.constexpr, NEED_T: tl.constexpr):
    """Folds one chunk of logits x (classes c) into the running statistics."""
    cmax = tl.max(x, axis=1)
    # First argmax as the smallest class attaining the max: tl.argmax's index tracking made
    # ptxas spill predicate registers on sm_80.
    cidx = tl.min(tl.where(x == cmax[:, None], c[None, :], 2147483647), axis=1).to(tl.int32)
    take = cmax > m
    new_m = tl.maximum(m, cmax)
    first = m == float("-inf")
    shift = tl.where(first, 0.0, (m - new_m) * inv_t)
    alpha = tl.where(first, 0.0, tl.exp(shift))
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
    return new_m, s, rest, t, xy, idx


@triton.jit
def row_stats(
    base,
    src,
    pmask,
    y,
    C,
    sC,
    inv_t,
    num_chunks,
    USE_Y: tl.constexpr,
    NEED_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    """Softmax statistics of softmax(x * inv_t) over classes, per pixel (logits read through a source
    tuple, see the module docstring).

    Returns (m, s, rest, t, idx, xy, x):
      m     max_c x_c (untempered);  s = sum_c exp((x_c - m) inv_t)
      rest  sum of the exp terms except class y (USE_Y) or except the first argmax
      t     sum_c e_c (x_c - m) inv_t (NEED_T), for the entropy log1p(rest) - t / s
      idx   first argmax;  xy = x_y (USE_Y)
      x     the whole row when SINGLE_CHUNK (reused by the gradient pass), else unused
    """
    m = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_P,), tl.float32)
    rest = tl.zeros((BLOCK_P,), tl.float32)
    t = tl.zeros((BLOCK_P,), tl.float32)
    xy = tl.zeros((BLOCK_P,), tl.float32)
    idx = tl.zeros((BLOCK_P,), tl.int32)
    if SINGLE_CHUNK:
        x, c = load_src(base, src, pmask, 0, C, sC, BLOCK_C)
        m, s, rest, t, xy, idx = _update_stats(x, c, y, m, s, rest, t, xy, idx, inv_t, USE_Y, NEED_T)
    else:
        x = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        for k in range(num_chunks):
            xk, c = load_src(base, src, pmask, k, C, sC, BLOCK_C)
            m, s, rest, t, xy, idx = _update_stats(xk, c, y, m, s, rest, t, xy, idx, inv_t, USE_Y, NEED_T)
    # a row of -inf has no softmax: NaN, as the reference's (confidence, entropy and loss NaN, never
    # "confident"); padding lanes beyond the image get it too, and every kernel masks them out
    s = tl.where(m == float("-inf"), float("nan"), s)
    return m, s, rest, t, idx, xy, x


@triton.jit
def ce_from_stats(m, s, rest, xy):
    """lse - x_y, as log1p(rest) when the target is the max (confident pixels), else m - x_y + log s;
    NaN where s is (a row without a softmax)."""
    return tl.where(s != s, s, tl.where(xy == m, log1p_pos(rest), (m - xy) + tl.log(s)))


@triton.jit
def store_grad(
    base_x,
    base_g,
    src_x,
    dst_g,
    pmask,
    x_last,
    m,
    y,
    scale,
    rest,
    C,
    sCx,
    sCg,
    num_chunks,
    BLOCK_C: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
):
    """g_c = scale * p_c for c != y and -scale * rest / s for c = y (scale already holds 1/s); logits
    read through the source tuple src_x, the gradient written through the destination tuple dst_g."""
    if SINGLE_CHUNK:
        _store_grad_chunk(base_g, dst_g, pmask, x_last, tl.arange(0, BLOCK_C), m, y, scale, rest, C, sCg)
    else:
        for k in range(num_chunks):
            x, c = load_src(base_x, src_x, pmask, k, C, sCx, BLOCK_C)
            _store_grad_chunk(base_g, dst_g, pmask, x, c, m, y, scale, rest, C, sCg)


@triton.jit
def _store_grad_chunk(base_g, dst_g, pmask, x, c, m, y, scale, rest, C, sCg):
    e = tl.where(x == float("-inf"), 0.0, tl.exp(x - m[:, None]))
    g = tl.where(c[None, :] == y[:, None], -(scale * rest)[:, None], scale[:, None] * e)
    # Inactive pixels (scale 0) store 0 even where their logits are not finite (0 * inf is NaN).
    g = tl.where(scale[:, None] == 0.0, 0.0, g)
    store_dst(base_g, dst_g, pmask, g, c, C, sCg)
