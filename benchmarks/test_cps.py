"""cps_loss: fused vs the eager two-cross-entropy version (semiseg_fast.reference.cps_loss, written as
CPS's code writes it) vs torch.compile of it; forward + both networks' gradients."""

from __future__ import annotations

import functools

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast import reference

from . import cases
from .conftest import synchronize

N, C, H, W = (2, 21, 33, 35) if cases.QUICK else (4, 21, 513, 513)
GROUP = "cps_loss fwd+bwd"
VARIANTS = [
    ("fp32", "nchw", "fused"),
    ("fp32", "nchw", "eager"),
    ("fp32", "nchw", "compile"),
    ("bf16", "channels_last", "fused"),
    ("bf16", "channels_last", "eager"),
]


@functools.lru_cache(maxsize=1)
def inputs(dtype_name, layout_name):
    """The two networks' logits: the benchmark inputs' student and teacher (the teacher ~70% confident)."""
    dtype = cases.DTYPES.get(dtype_name, torch.bfloat16)  # the quick run's tables hold fp32 NCHW only
    layout = cases.LAYOUTS.get(layout_name, torch.channels_last)
    inp = cases.make_inputs(("cps", N, C, H, W), dtype, layout, seed=7)
    return inp.student, inp.teacher, inp.ignore_mask


@pytest.mark.parametrize("dtype,layout,impl", VARIANTS, ids=["-".join(v) for v in VARIANTS])
def test_cps_loss(benchmark, dtype, layout, impl):
    a, b, ignore = inputs(dtype, layout)
    call = sf.cps_loss if impl == "fused" else reference.cps_loss
    if impl == "compile":
        call = torch.compile(call, fullgraph=True, dynamic=False)
    xa, xb = a.detach().requires_grad_(), b.detach().requires_grad_()
    fn = lambda: torch.autograd.grad(call(xa, xb, ignore), (xa, xb))
    logits = xa.numel() * xa.element_size()
    benchmark.group = GROUP
    benchmark.extra_info.update(
        op=GROUP,
        impl=impl,
        dtype=dtype,
        layout=layout,
        shape=[N, C, H, W],
        device=str(cases.device()),
        bytes=2 * logits + ignore.numel() + 2 * logits,
    )
    for _ in range(2 if impl == "compile" else 1):
        fn()
        synchronize()
    benchmark.pedantic(
        lambda: (fn(), synchronize()), rounds=11 if impl == "fused" else 5, iterations=1, warmup_rounds=1
    )
