"""fixmatch_loss: fused vs eager reference vs torch.compile of the reference."""

import pytest

from .conftest import case_params, run_case


@pytest.mark.parametrize("shape,dtype,layout,mode,impl", list(case_params()))
def test_fixmatch_loss(benchmark, shape, dtype, layout, mode, impl):
    run_case(benchmark, "fixmatch_loss", shape, dtype, layout, mode, impl)


def test_fixmatch_loss_without_buffer_cache(benchmark):
    """The fused loss when every gradient buffer is a fresh allocation (cache disabled), at the
    first shape in fp32 NCHW: the cost of a first step, or of a user who turns the cache off."""
    import semiseg_fast as sf

    from . import cases

    limit = sf.cpu_cache_info()["limit_bytes"] if cases.device().type == "cpu" else None
    if limit is not None:
        sf.empty_cpu_cache()
        sf.set_cpu_cache_limit(0)
    try:
        run_case(benchmark, "fixmatch_loss", cases.SHAPES[0], "fp32", "nchw", "fwd+bwd", "fused-nocache")
    finally:
        if limit is not None:
            sf.set_cpu_cache_limit(limit)
