"""PseudoSeg consistency loss: fused vs the eager transcription of the official fusion + soft CE
(semiseg_fast.reference.pseudoseg) vs torch.compile of that transcription."""

from __future__ import annotations

import functools

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast import reference

from . import cases
from .conftest import synchronize

N, C, H, W = (2, 21, 33, 35) if cases.QUICK else (4, 21, 513, 513)
GROUP = "pseudoseg_consistency_loss fwd+bwd"
VARIANTS = [
    ("fp32", "nchw", "fused"),
    ("fp32", "nchw", "eager"),
    ("fp32", "nchw", "compile"),
    ("bf16", "channels_last", "fused"),
    ("bf16", "channels_last", "eager"),
]


@functools.lru_cache(maxsize=1)
def inputs(dtype_name, layout_name):
    dtype, layout = cases.DTYPES.get(dtype_name, torch.bfloat16), cases.LAYOUTS.get(layout_name, torch.channels_last)
    inp = cases.make_inputs(("pseudoseg", N, C, H, W), dtype, layout, seed=5)
    g = torch.Generator().manual_seed(6)
    sgc = (torch.randn(N, C, H, W, generator=g) * 2).to(cases.device(), dtype).contiguous(memory_format=layout)
    valid = torch.ones(N, H, W, dtype=torch.bool, device=cases.device())
    valid[:, H // 4 : H // 4 + H // 5, W // 3 : W // 3 + W // 5] = False  # PseudoSeg's Cutout box
    return inp.student, inp.teacher, sgc, valid


@pytest.mark.parametrize("dtype,layout,impl", VARIANTS, ids=["-".join(v) for v in VARIANTS])
def test_pseudoseg_loss(benchmark, dtype, layout, impl):
    student, decoder, sgc, valid = inputs(dtype, layout)
    call = sf.pseudoseg_consistency_loss if impl == "fused" else reference.pseudoseg.pseudoseg_consistency_loss
    if impl == "compile":
        call = torch.compile(call, fullgraph=True, dynamic=False)
    x = student.detach().requires_grad_()
    fn = lambda: torch.autograd.grad(call(x, decoder, sgc, valid), x)
    logits = x.numel() * x.element_size()
    benchmark.group = GROUP
    benchmark.extra_info.update(
        op=GROUP,
        impl=impl,
        dtype=dtype,
        layout=layout,
        shape=[N, C, H, W],
        device=str(cases.device()),
        bytes=5 * logits + valid.numel() + logits,
    )
    for _ in range(2 if impl == "compile" else 1):
        fn()
        synchronize()
    benchmark.pedantic(
        lambda: (fn(), synchronize()), rounds=11 if impl == "fused" else 5, iterations=1, warmup_rounds=1
    )
