"""Losses at the decoder's resolution: the host side of ``size=`` for the Triton kernels.

With ``size=(H, W)`` a fused kernel's program owns output pixels of the (H, W) map; the logits stay
at the decoder's (h, w) and every read interpolates the 4 bilinear neighbours in registers through
the tap tables built here (torch's bilinear indices and weights, semiseg_fast.base.resample.axis_weights,
H + W entries per call), so the upsampled logits never exist. The gradient each kernel computes in
its forward pass at an output pixel goes back to the 4 neighbours.

Determinism. By default the gradient is scattered with fp32 (fp64 for fp64 logits) atomic adds
into the zeroed low-res gradient buffer: no extra memory, but the order of the adds, hence the last
bits of the gradient, varies from run to run. Under ``torch.use_deterministic_algorithms(True)``
the fused kernel instead stores its gradient at full resolution in a transient fp32 (N, C, H, W)
buffer, and a second kernel computes every low-res element as a sum over its bilinear window in a
fixed order, with no atomics: bitwise reproducible, at the cost of that transient buffer,
4 * N * C * H * W bytes (e.g. 637 MB for 8 x 19 x 1024 x 1024), and of one more pass writing and
reading it. The values (statistics, losses, confidences) are deterministic on both paths.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..base.resample import axis_weights
from ._common import block_config, flat_pixels, launch, pixel_offsets


class Resampling:
    """The bilinear taps of one launch at ``size`` (H, W), or the identity when ``size`` is None.

    ``args()`` are the kernels' (tap indices, tap weights, H) arguments; with ``size`` None they
    are None, which a kernel's RESAMPLE=False never reads. ``grad_target`` and
    ``finish_grad`` give the buffer a kernel writes its gradient into and turn it into the gradient
    at the logits' shape.
    """

    def __init__(self, logits: torch.Tensor, size, align_corners: bool):
        n, c, h, w = logits.shape
        self.on = size is not None
        self.in_h, self.in_w = h, w
        self.out_h, self.out_w = (h, w) if size is None else (int(size[0]), int(size[1]))
        self.deterministic = self.on and torch.are_deterministic_algorithms_enabled()
        self.idx = self.wts = None
        if self.on:
            ay = axis_weights(h, self.out_h, align_corners, logits.device)
            ax = axis_weights(w, self.out_w, align_corners, logits.device)
            self.idx = torch.cat([ay.i0, ay.i1, ax.i0, ax.i1])
            self.wts = torch.cat([ay.l0, ay.l1, ax.l0, ax.l1])
            self._axes = (ay, ax)

    @property
    def pixels(self) -> int:
        """H * W, the pixels of one image of every per-pixel map."""
        return self.out_h * self.out_w

    def args(self) -> tuple:
        """The kernels' (ridx_ptr, rw_ptr, Ho): all None (constexpr, never read) without ``size``."""
        return (self.idx, self.wts, self.out_h) if self.on else (None, None, None)

    def scatter(self) -> bool:
        """Whether the kernel scatters its gradient with atomics (SCATTER) into the low-res buffer."""
        return self.on and not self.deterministic

    def grad_target(self, buffer: torch.Tensor, need_grad: bool) -> torch.Tensor:
        """What the kernel writes its gradient into, for a gradient wanted in ``buffer`` (logits'
        shape): the buffer itself (zeroed for the atomic scatter; fp32 or fp64) or, deterministic,
        a transient full-resolution fp32 buffer."""
        if not (self.on and need_grad):
            return buffer
        if self.deterministic:
            n, c = buffer.shape[:2]
            return torch.empty((n, c, self.out_h, self.out_w), device=buffer.device, dtype=torch.float32)
        return buffer.zero_()

    def finish_grad(self, target: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        """The gradient in ``buffer`` once the kernel wrote ``target`` (see grad_target)."""
        if self.deterministic and target is not buffer:
            gather_grad(target, buffer, self)
        return buffer

    def inverse_tables(self) -> torch.Tensor:
        """int32 [ys (h), ye (h), xs (w), xe (w)]: source index i of each axis receives from the output
        indices [start, end) (those whose two taps include i; i0 and i1 are non-decreasing)."""
        parts = []
        for a, in_size in zip(self._axes, (self.in_h, self.in_w)):
            i = torch.arange(in_size, device=a.i0.device, dtype=torch.int32)
            parts.append(torch.searchsorted(a.i1, i, right=False).to(torch.int32))
            parts.append(torch.searchsorted(a.i0, i, right=True).to(torch.int32))
        return torch.cat(parts)


@triton.jit
def _axis_weight(ridx_ptr, rw_ptr, j, i, jmask, n_out):
    """The weight output index j (table of n_out entries) gives source index i: l0 where i0 is i
    plus l1 where i1 is i (both at a clamped edge)."""
    i0 = tl.load(ridx_ptr + j, mask=jmask, other=-1)
    i1 = tl.load(ridx_ptr + n_out + j, mask=jmask, other=-1)
    l0 = tl.load(rw_ptr + j, mask=jmask, other=0.0)
    l1 = tl.load(rw_ptr + n_out + j, mask=jmask, other=0.0)
    return tl.where(i0 == i, l0, 0.0) + tl.where(i1 == i, l1, 0.0)


@triton.jit
def resample_grad_kernel(
    f_ptr,
    g_ptr,
    ridx_ptr,
    rw_ptr,
    inv_ptr,
    C,
    hw_in,
    h,
    w,
    Ho,
    Wo,
    sfN,
    sfC,
    sfH,
    sfW,
    sgN,
    sgC,
    sgH,
    sgW,
    num_chunks,
    FLAT_G: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """g[n, c, i, k] = sum over the output window of (i, k) of wy * wx * f[n, c, j, l], in a fixed
    order (the deterministic path's gather; f is the full-resolution fp32 gradient)."""
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < hw_in
    iy = hw // w
    ix = hw % w
    ys = tl.load(inv_ptr + iy, mask=pmask, other=0)
    ye = tl.load(inv_ptr + h + iy, mask=pmask, other=0)
    xs = tl.load(inv_ptr + 2 * h + ix, mask=pmask, other=0)
    xe = tl.load(inv_ptr + 2 * h + w + ix, mask=pmask, other=0)
    win_y = tl.max(tl.where(pmask, ye - ys, 0), axis=0)
    win_x = tl.max(tl.where(pmask, xe - xs, 0), axis=0)
    f_base = f_ptr + n * sfN
    goff = pixel_offsets(hw, w, sgH, sgW, FLAT_G)
    for k in range(num_chunks):
        c = k * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        co = c[None, :].to(tl.int64) * sfC
        acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
        for dy in range(win_y):
            j = ys + dy
            jm = pmask & (j < ye)
            wy = _axis_weight(ridx_ptr, rw_ptr, j, iy, jm, Ho)
            for dx in range(win_x):
                xo = xs + dx
                xm = jm & (xo < xe)
                wx = _axis_weight(ridx_ptr + 2 * Ho, rw_ptr + 2 * Ho, xo, ix, xm, Wo)
                off = j.to(tl.int64) * sfH + xo.to(tl.int64) * sfW
                v = tl.load(f_base + off[:, None] + co, mask=xm[:, None] & cmask[None, :], other=0.0)
                acc += v * (wy * wx)[:, None]
        tl.store(
            g_ptr + n * sgN + goff[:, None] + c[None, :].to(tl.int64) * sgC,
            acc.to(g_ptr.dtype.element_ty),
            mask=pmask[:, None] & cmask[None, :],
        )


def gather_grad(full: torch.Tensor, out: torch.Tensor, rs: Resampling) -> None:
    """out (N, C, h, w) = the adjoint of the bilinear resampling applied to full (N, C, H, W)."""
    n, c, h, w = out.shape
    if out.numel() == 0:
        return
    block_p, block_c, chunks, warps = block_config(c, resample=True)
    launch(
        resample_grad_kernel,
        (triton.cdiv(h * w, block_p), n),
        full,
        out,
        rs.idx,
        rs.wts,
        rs.inverse_tables(),
        c,
        h * w,
        h,
        w,
        rs.out_h,
        rs.out_w,
        *full.stride(),
        *out.stride(),
        chunks,
        FLAT_G=flat_pixels(h, w, out.stride(2), out.stride(3)),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=warps,
    )
