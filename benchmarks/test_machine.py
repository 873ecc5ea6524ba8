"""This machine's memory bandwidth and the floor of the fused FixMatch loss, measured in the
same run as the ops so that ratios against them are meaningful."""

import torch

from . import cases
from .conftest import inputs_for, synchronize


def _group(benchmark, name, **info):
    benchmark.group = "machine"
    benchmark.extra_info.update(kind=name, device=str(cases.device()), **info)


def test_read_bandwidth(benchmark):
    x = torch.ones(64 * 2**20, device=cases.device())  # 256 MiB, far beyond any cache
    _group(benchmark, "read", bytes=x.numel() * 4)
    benchmark.pedantic(lambda: (x.sum(), synchronize()), rounds=10, warmup_rounds=2)


def test_copy_bandwidth(benchmark):
    x = torch.ones(64 * 2**20, device=cases.device())
    y = torch.empty_like(x)
    _group(benchmark, "copy", bytes=2 * x.numel() * 4)
    benchmark.pedantic(lambda: (y.copy_(x), synchronize()), rounds=10, warmup_rounds=2)


def _floor_parts(shape, dtype_name="fp32", layout_name="nchw"):
    inp = inputs_for(shape, dtype_name, layout_name)
    return inp.student, inp.teacher


def test_floor_read_both_logits(benchmark):
    shape = cases.SHAPES[0]
    s, t = _floor_parts(shape)
    _group(benchmark, "floor_read", shape=list(shape), bytes=2 * s.numel() * s.element_size())
    benchmark.pedantic(lambda: (s.sum(), t.sum(), synchronize()), rounds=10, warmup_rounds=2)


def test_floor_fresh_logits_sized_tensor(benchmark):
    shape = cases.SHAPES[0]
    s, _ = _floor_parts(shape)
    _group(benchmark, "floor_alloc_fill", shape=list(shape), bytes=s.numel() * s.element_size())
    benchmark.pedantic(lambda: (torch.empty_like(s).fill_(1.0), synchronize()), rounds=10, warmup_rounds=2)
