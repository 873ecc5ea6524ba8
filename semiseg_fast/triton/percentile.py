"""Triton radix select for entropy_percentile: the k-th smallest of the valid values for every
needed rank at once, in four passes of 8 bits over order-preserving uint32 keys, with the rank
bookkeeping on the device (no host sync, no sort, no size cap)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch

BLOCK = 1024  # 4 values per thread at 8 warps: larger blocks made ptxas spill predicates on sm_80


@triton.jit
def radix_histogram_kernel(
    x_ptr,
    valid_ptr,
    prefix_ptr,
    hist_ptr,
    numel,
    T: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """hist[t, d] += #{valid x whose key's digit at SHIFT is d and whose higher digits equal prefix[t]'s}."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_VALID:
        m = m & (tl.load(valid_ptr + offs, mask=m, other=0) != 0)
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 and +0.0 are one value
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(x != x, 0x7FC00000, bits)  # one NaN, sorting after +inf
    # Order-preserving key: flip all bits of negatives, only the sign bit of the rest.
    key = (bits ^ ((bits >> 31) | -2147483648)).to(tl.uint32, bitcast=True)
    digit = ((key >> SHIFT) & 255).to(tl.int32)
    for t in tl.static_range(T):
        if SHIFT == 24:
            match = m
        else:
            prefix = tl.load(prefix_ptr + t).to(tl.uint32)
            match = m & ((key >> (SHIFT + 8)) == (prefix >> (SHIFT + 8)))
        h = tl.histogram(digit, 256, mask=match)
        tl.atomic_add(hist_ptr + t * 256 + tl.arange(0, 256), h)


def _key_to_float(key: torch.Tensor) -> torch.Tensor:
    """Inverse of the kernel's key map, on int64 holding uint32 keys."""
    bits = torch.where(key >= 2**31, key - 2**31, (~key) & 0xFFFFFFFF)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)  # to int32 range
    return bits.to(torch.int32).view(torch.float32)


def select_ranks(values: torch.Tensor, valid: torch.Tensor | None, ranks: torch.Tensor) -> torch.Tensor:
    """Values (fp32) of the given 0-based ranks among the valid entries, ascending order."""
    x = values.reshape(-1)
    v = valid.reshape(-1) if valid is not None else x
    t = ranks.numel()
    rank = ranks.to(torch.int64).clone()
    prefix = torch.zeros(t, dtype=torch.int64, device=x.device)
    grid = (triton.cdiv(x.numel(), BLOCK),)
    for shift in (24, 16, 8, 0):
        hist = torch.zeros((t, 256), dtype=torch.int32, device=x.device)
        launch(
            radix_histogram_kernel,
            grid,
            x,
            v,
            prefix,
            hist,
            x.numel(),
            T=t,
            SHIFT=shift,
            HAS_VALID=valid is not None,
            BLOCK=BLOCK,
            num_warps=8,
        )
        cum = hist.to(torch.int64).cumsum(1)
        b = torch.searchsorted(cum, rank.unsqueeze(1), right=True).squeeze(1).clamp_max(255)
        below = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0).unsqueeze(1)).squeeze(1), torch.zeros_like(b))
        rank = rank - below
        prefix = prefix | (b << shift)
    return _key_to_float(prefix)


def numpy_linear_interp(n: torch.Tensor, q: list[float]):
    """NumPy's "linear" percentile indexes for n values (a device tensor): (prev, next, gamma), float64 math."""
    qq = torch.tensor([qi / 100.0 for qi in q], dtype=torch.float64, device=n.device)
    nf = n.to(torch.float64)
    virt = (nf - 1) * qq
    last = (n - 1).clamp_min(0)
    above = virt >= nf - 1
    below = virt < 0
    fl = torch.floor(virt).clamp_min(0)
    prev = torch.where(above, last, torch.where(below, torch.zeros_like(last), fl.to(torch.int64)))
    nxt = torch.where(above | below, prev, prev + 1)
    gamma = torch.where(above, virt + 1, torch.where(below, virt, virt - fl))
    return prev, nxt, gamma


def percentile(values: torch.Tensor, valid: torch.Tensor | None, q: list[float]) -> torch.Tensor:
    x = values.contiguous()
    v = valid.contiguous() if valid is not None else None
    mask = v if v is not None else torch.ones_like(x, dtype=torch.bool)
    n = mask.sum()
    prev, nxt, gamma = numpy_linear_interp(n, q)
    vals = select_ranks(x, v, torch.cat([prev, nxt])).to(torch.float64)
    a, b = vals[: len(q)], vals[len(q) :]
    diff = b - a
    res = torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    bad = (n == 0) | (torch.isnan(x) & mask).any()
    return torch.where(bad, torch.full_like(res, float("nan")), res).to(torch.float32)
