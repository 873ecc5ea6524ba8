"""Resident memory over 300 fixmatch_loss forward+backward calls whose shapes change every call
(N in 1-2, C = 21, H and W in 32-128: up to 2x21x128x128), at the default CPU cache budget.

Run alone, in a fresh process (``python -m benchmarks.varying_shapes``): it prints one JSON line.
``write_results.py`` runs it and puts the figures in RESULTS.md.
"""

from __future__ import annotations

import json
import random

import torch

import semiseg_fast as sf

CALLS = 300
MAX_SHAPE = (2, 21, 128, 128)


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def one_call(n: int, c: int, h: int, w: int, gen: torch.Generator) -> None:
    student = torch.randn(n, c, h, w, generator=gen).requires_grad_()
    teacher = torch.randn(n, c, h, w, generator=gen) * 4
    torch.autograd.grad(sf.fixmatch_loss(student, teacher, threshold=0.5), student)


def measure(seed: int = 0) -> dict:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    with sf.backend("cpp"):
        one_call(*MAX_SHAPE, gen)  # warm-up at the largest shape: the allocator's first growth
        start = peak = resident_mb()
        for _ in range(CALLS):
            one_call(rng.randint(1, 2), 21, rng.randint(32, 128), rng.randint(32, 128), gen)
            peak = max(peak, resident_mb())
        end = resident_mb()
    return dict(
        calls=CALLS,
        max_shape=list(MAX_SHAPE),
        start_mb=start,
        end_mb=end,
        growth_mb=end - start,
        peak_growth_mb=peak - start,
        cached_mb=sf.cpu_cache_info()["cached_bytes"] / 2**20,
        limit_mb=sf.cpu_cache_info()["limit_bytes"] / 2**20,
    )


if __name__ == "__main__":
    print(json.dumps(measure()))
