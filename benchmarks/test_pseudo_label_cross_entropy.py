"""pseudo_label_cross_entropy: fused vs eager reference vs torch.compile of the reference."""

import pytest

from .conftest import case_params, run_case


@pytest.mark.parametrize("shape,dtype,layout,mode,impl", list(case_params()))
def test_pseudo_label_cross_entropy(benchmark, shape, dtype, layout, mode, impl):
    run_case(benchmark, "pseudo_label_cross_entropy", shape, dtype, layout, mode, impl)
