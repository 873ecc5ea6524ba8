"""photometric_loss: fused vs the eager Monodepth2-style code (semiseg_fast.reference.photometric)
vs torch.compile of it; forward + the warped sources' gradient, S = 2 with identity."""

from __future__ import annotations

import functools

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.reference.photometric import photometric_loss as eager_loss

from . import cases
from .conftest import synchronize

S, N, H, W = (2, 2, 24, 40) if cases.QUICK else (2, 8, 256, 512)
GROUP = "photometric_loss fwd+bwd"
VARIANTS = ["fused", "eager", "compile"]


@functools.lru_cache(maxsize=1)
def inputs():
    g = torch.Generator().manual_seed(3)
    make = lambda *shape: torch.rand(*shape, generator=g).to(cases.device())
    return make(N, 3, H, W), make(S, N, 3, H, W), make(S, N, 3, H, W)


@pytest.mark.parametrize("impl", VARIANTS)
def test_photometric_loss(benchmark, impl):
    target, warped, identity = inputs()
    call = sf.photometric_loss if impl == "fused" else eager_loss
    if impl == "compile":
        call = torch.compile(call, fullgraph=True, dynamic=False)
    w = warped.detach().requires_grad_()
    fn = lambda: torch.autograd.grad(call(target, w, identity), (w,))
    benchmark.group = GROUP
    benchmark.extra_info.update(op=GROUP, impl=impl, dtype="fp32", shape=[S, N, 3, H, W], device=str(cases.device()))
    for _ in range(2 if impl == "compile" else 1):
        fn()
        synchronize()
    benchmark.pedantic(
        lambda: (fn(), synchronize()), rounds=11 if impl == "fused" else 5, iterations=1, warmup_rounds=1
    )
