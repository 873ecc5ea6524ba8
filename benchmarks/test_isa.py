"""The C++ kernels of every instruction-set build this CPU runs (avx512_bf16, avx512, avx2, generic),
one after the other in the same run, at the first shape: the vector width's share of the speed."""

import pytest
import torch

from semiseg_fast import cpp_available

from . import cases
from .conftest import run_case

ISAS = list(torch.ops.semiseg_fast._cpp_kernel_isas()) if cpp_available() else []
CASES = [
    ("pixel_stats", "fp32", "nchw", "fwd"),
    ("pixel_stats", "fp32", "channels_last", "fwd"),
    ("pixel_stats", "bf16", "nchw", "fwd"),
    ("pseudo_label_cross_entropy", "fp32", "nchw", "fwd+bwd"),
    ("pseudo_label_cross_entropy", "bf16", "channels_last", "fwd+bwd"),
]
CASES = [c for c in CASES if c[1] in cases.DTYPES and c[2] in cases.LAYOUTS]


@pytest.mark.skipif(cases.device().type != "cpu" or not ISAS, reason="the C++ CPU kernels only")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("op,dtype,layout,mode", CASES)
def test_instruction_sets(benchmark, isa, op, dtype, layout, mode):
    kernel_isa = torch.ops.semiseg_fast._cpp_kernel_isa
    before = kernel_isa("")
    kernel_isa(isa)
    try:
        run_case(benchmark, op, cases.SHAPES[0], dtype, layout, mode, f"fused-{isa}", rounds=11)
    finally:
        kernel_isa(before)
    benchmark.group = f"isa {benchmark.group}"
