"""Triton kernel of negative_class_mask: per-pixel class ranks by comparisons, no sort."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_config, flat_pixels, launch, load_chunk, pixel_offsets


@triton.jit
def negative_mask_kernel(
    x_ptr,
    out_ptr,
    C,
    HW,
    W,
    sN,
    sC,
    sH,
    sW,
    low_rank,
    high_rank,
    num_chunks,
    FLAT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # rank_c = #{k : x_k > x_c} + #{k < c : x_k == x_c}, accumulated one class k at a time.
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    # Padding pixels read the last real pixel instead of being masked: unmasked loads keep the
    # inner loop free of predicates (masked ones made ptxas spill predicate registers).
    poff = pixel_offsets(tl.minimum(hw, HW - 1), W, sH, sW, FLAT)
    base = x_ptr + n * sN
    for j in range(num_chunks):
        x, c = load_chunk(base, poff, pmask, j, C, sC, BLOCK_C)
        rank = tl.zeros((BLOCK_P, BLOCK_C), tl.int32)
        for k in range(C):
            xk = tl.load(base + poff + k * sC).to(tl.float32)[:, None]
            before = (xk > x) | ((xk == x) & (k < c[None, :]))
            rank += before.to(tl.int32)
        inside = (rank >= low_rank) & (rank < high_rank)
        ptr = out_ptr + (n * C + c[None, :].to(tl.int64)) * HW + hw[:, None]
        tl.store(ptr, inside.to(tl.int8), mask=pmask[:, None] & (c < C)[None, :])


def negative_mask(x: torch.Tensor, low_rank: int, high_rank: int) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), device=x.device, dtype=torch.bool)
    if n * h * w == 0:
        return out
    block_p, block_c, chunks, warps = block_config(c)
    launch(
        negative_mask_kernel,
        (triton.cdiv(h * w, block_p), n),
        x,
        out.view(torch.int8),
        c,
        h * w,
        w,
        *x.stride(),
        low_rank,
        min(high_rank, c),
        chunks,
        FLAT=flat_pixels(h, w, x.stride(2), x.stride(3)),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return out
