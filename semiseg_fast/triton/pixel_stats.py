"""Triton kernel of pixel_stats."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import label_dtype
from ._common import block_config, flat_pixels, log1p_pos, pixel_offsets, row_stats


@triton.jit
def pixel_stats_kernel(
    x_ptr, conf_ptr, label_ptr, ent_ptr,
    C, HW, W, sN, sC, sH, sW, inv_t,
    FLAT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, NUM_CHUNKS: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = hw < HW
    poff = pixel_offsets(hw, W, sH, sW, FLAT)
    y = tl.zeros((BLOCK_P,), tl.int32)
    m, s, rest, t, idx, xy, x_last = row_stats(
        x_ptr + n * sN, poff, pmask, y, C, sC, inv_t, False, True, BLOCK_P, BLOCK_C, NUM_CHUNKS
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
    pixel_stats_kernel[grid](
        logits, conf, label, ent, c, h * w, w, s_n, s_c, s_h, s_w, 1.0 / temperature,
        FLAT=flat_pixels(h, w, s_h, s_w), BLOCK_P=block_p, BLOCK_C=block_c, NUM_CHUNKS=chunks, num_warps=warps,
    )
    return conf, label, ent
