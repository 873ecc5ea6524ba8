"""Triton InfoNCE for U2PL's contrastive term: one program per anchor reads its negatives by row
from the key table (the memory bank), twice (logits, then gradient), and never writes them out."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch


@triton.jit
def infonce_kernel(
    anchors_ptr,
    positive_ptr,
    keys_ptr,
    rows_ptr,
    weight_ptr,
    loss_ptr,
    grad_ptr,
    Q,
    M,
    D,
    inv_t,
    NEED_GRAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    k = i // Q
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    w = tl.load(weight_ptr + k)
    f = tl.load(anchors_ptr + i * D + d, mask=dm, other=0.0)
    pos = tl.load(positive_ptr + k * D + d, mask=dm, other=0.0)
    nf = tl.sqrt(tl.sum(f * f, 0))
    inv_nf = 1.0 / tl.maximum(nf, 1e-8)
    scale = inv_nf * inv_t
    l0 = tl.sum(f * pos, 0) * scale
    # online softmax over the positive and the M negatives
    mx = l0
    s = 1.0
    for j in range(0, M):
        r = tl.load(rows_ptr + i * M + j)
        key = tl.load(keys_ptr + r * D + d, mask=dm, other=0.0)
        lj = tl.sum(f * key, 0) * scale / tl.maximum(tl.sqrt(tl.sum(key * key, 0)), 1e-8)
        new = tl.maximum(mx, lj)
        s = s * tl.exp(mx - new) + tl.exp(lj - new)
        mx = new
    lse = mx + tl.log(s)
    active = w != 0.0
    tl.store(loss_ptr + i, tl.where(active, w * (lse - l0), 0.0))
    if NEED_GRAD:
        c = w * inv_t
        dq = c * (tl.exp(l0 - lse) - 1.0) * pos
        for j in range(0, M):
            r = tl.load(rows_ptr + i * M + j)
            key = tl.load(keys_ptr + r * D + d, mask=dm, other=0.0)
            inv_nk = 1.0 / tl.maximum(tl.sqrt(tl.sum(key * key, 0)), 1e-8)
            lj = tl.sum(f * key, 0) * scale * inv_nk
            dq += (c * tl.exp(lj - lse) * inv_nk) * key
        qdq = tl.where(nf > 1e-8, tl.sum(f * dq, 0) * inv_nf, 0.0)
        g = (dq - f * inv_nf * qdq) * inv_nf
        tl.store(grad_ptr + i * D + d, tl.where(active, g, 0.0), mask=dm)


def infonce(anchors, positive, keys, rows, weight, temperature: float, need_grad: bool):
    k, q, d = anchors.shape
    m = rows.shape[2]
    x = anchors.contiguous()
    loss = torch.empty(k * q, dtype=torch.float32, device=x.device)
    grad = torch.empty_like(x) if need_grad else x.new_empty((0,))
    if k * q > 0:
        launch(
            infonce_kernel,
            (k * q,),
            x,
            positive.contiguous(),
            keys.contiguous(),
            rows.contiguous(),
            weight.contiguous(),
            loss,
            grad if need_grad else x,
            q,
            m,
            d,
            1.0 / temperature,
            NEED_GRAD=need_grad,
            BLOCK_D=triton.next_power_of_2(d),
            num_warps=4,
        )
    return loss.sum(), grad
