"""pixel_stats: fused vs eager reference vs torch.compile of the reference."""

import pytest

from .conftest import case_params, run_case


@pytest.mark.parametrize("shape,dtype,layout,mode,impl", list(case_params()))
def test_pixel_stats(benchmark, shape, dtype, layout, mode, impl):
    run_case(benchmark, "pixel_stats", shape, dtype, layout, mode, impl)
