"""fixmatch_loss: fused vs eager reference vs torch.compile of the reference."""
import pytest

from .conftest import case_params, run_case


@pytest.mark.parametrize("shape,dtype,layout,mode,impl", list(case_params()))
def test_fixmatch_loss(benchmark, shape, dtype, layout, mode, impl):
    run_case(benchmark, "fixmatch_loss", shape, dtype, layout, mode, impl)
