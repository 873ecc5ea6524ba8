"""Shared fixtures of the benchmarks. Run with: pytest benchmarks --benchmark-only"""

from __future__ import annotations

import functools
import gc
import itertools

import pytest
import torch

from . import cases

torch._dynamo.config.cache_size_limit = 64


@functools.lru_cache(maxsize=1)
def inputs_for(shape, dtype_name, layout_name):
    gc.collect()
    return cases.make_inputs(shape, cases.DTYPES[dtype_name], cases.LAYOUTS[layout_name])


def case_params():
    """(shape, dtype, layout, mode, impl), ordered so that one input set serves many cases."""
    for shape, dt, lay in itertools.product(cases.SHAPES, cases.DTYPES, cases.LAYOUTS):
        for mode, impl in itertools.product(cases.MODES, cases.IMPLS):
            yield pytest.param(shape, dt, lay, mode, impl, id=f"{shape[0]}-{dt}-{lay}-{mode}-{impl}")


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_case(benchmark, op, shape, dtype_name, layout_name, mode, impl, rounds=None):
    inp = inputs_for(shape, dtype_name, layout_name)
    fn = cases.make_runner(op, impl, mode, inp)
    if rounds is None:
        rounds = 5 if impl in ("eager", "compile") else 11  # the fused ops are cheap: more rounds, less noise
    benchmark.group = f"{op} {shape[0]} {dtype_name} {layout_name} {mode}"
    benchmark.extra_info.update(
        op=op,
        shape=list(shape),
        dtype=dtype_name,
        layout=layout_name,
        mode=mode,
        impl=impl,
        device=str(cases.device()),
        bytes=cases.minimal_bytes(op, mode, inp),
    )

    def timed():
        out = fn()
        synchronize()
        return out

    for _ in range(2 if impl == "compile" else 1):  # compile (and its recompiles) outside the timing
        timed()
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
