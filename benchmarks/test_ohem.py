"""ohem_cross_entropy at the Cityscapes shape, the recipe that uses it: fused (selection, no sort) vs the
eager sort-based reference vs torch.compile of it."""

import pytest

from .conftest import case_params, run_case

CASES = [p for p in case_params() if p.values[0][0] in ("cityscapes", "tiny")]


@pytest.mark.parametrize("shape,dtype,layout,mode,impl", CASES)
def test_ohem_cross_entropy(benchmark, shape, dtype, layout, mode, impl):
    run_case(benchmark, "ohem_cross_entropy", shape, dtype, layout, mode, impl)
