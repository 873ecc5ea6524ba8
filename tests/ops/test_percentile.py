import numpy as np
import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ALL


def values(n, seed=0, ties=True, zeros=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g).abs() * 3
    if ties and n > 3:
        x[: n // 4] = x[0]  # a quarter of the values equal
    if zeros and n > 3:
        x[n // 4 : n // 3] = -0.0  # confident pixels: entropy exactly -0.0
        x[n // 3 : n // 3 + n // 20] = 0.0
    return x[torch.randperm(n, generator=g)].to(dtype)


def numpy_percentile(x, valid, q):
    a = x[valid] if valid is not None else x
    return torch.tensor(np.percentile(a.double().numpy(), q), dtype=torch.float64).float()


QS = [0.0, 0.1, 2.5, 20.0, 33.3, 50.0, 80.0, 99.99, 100.0]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 4097, 65537])
def test_equals_numpy(backend, n):
    x = values(n, seed=n)
    valid = torch.rand(n, generator=torch.Generator().manual_seed(1)) > 0.25
    valid[0] = True
    with sf.backend(backend):
        out = sf.entropy_percentile(x, valid, QS)
    expected = numpy_percentile(x, valid, QS)
    assert out.dtype == torch.float32 and out.shape == (len(QS),)
    assert torch.equal(out, expected), (out - expected).abs().max()


@pytest.mark.parametrize("backend", ["cpp"])
@pytest.mark.parametrize("n", [1_000_000, 20_000_000])
def test_equals_numpy_at_scale(backend, n):
    # 20M valid values: beyond torch.quantile's 2^24 cap.
    x = values(n, seed=3)
    with sf.backend(backend):
        out = sf.entropy_percentile(x, None, [20.0, 80.0, 99.5])
    assert torch.equal(out, numpy_percentile(x, None, [20.0, 80.0, 99.5]))


@pytest.mark.parametrize("backend", ["triton"])
def test_triton_radix_select_at_a_million(backend):
    x = values(1_000_000, seed=4).view(4, 500, 500)
    valid = x > 0.1
    with sf.backend(backend):
        out = sf.entropy_percentile(x, valid, [20.0, 80.0])
    assert torch.equal(out, numpy_percentile(x, valid, [20.0, 80.0]))


@pytest.mark.parametrize("backend", ALL)
def test_negative_values_all_ties_and_scalar_q(backend):
    x = torch.tensor([-3.0, -0.0, 0.0, 2.0, -1e-30, 7.5, -1e30])
    with sf.backend(backend):
        for q in (0, 10, 50, 75, 100):
            out = sf.entropy_percentile(x, None, q)
            assert out.dim() == 0
            assert out == numpy_percentile(x, None, [q])[0]
        same = torch.full((5, 5), 0.25)
        assert sf.entropy_percentile(same, None, 37.0) == 0.25


@pytest.mark.parametrize("backend", ALL)
def test_no_valid_value_or_nan_gives_nan(backend):
    x = torch.rand(3, 4)
    with sf.backend(backend):
        assert torch.isnan(sf.entropy_percentile(x, torch.zeros(3, 4, dtype=torch.bool), [50.0])).all()
        x[1, 1] = float("nan")
        assert torch.isnan(sf.entropy_percentile(x, None, [10.0, 90.0])).all()
        masked = torch.ones(3, 4, dtype=torch.bool)
        masked[1, 1] = False  # the NaN is not valid: ignored
        assert not torch.isnan(sf.entropy_percentile(x, masked, [50.0])).any()


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_other_float_dtypes(backend):
    x = values(1000, seed=5)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        with sf.backend(backend):
            out = sf.entropy_percentile(x.to(dt), None, [30.0, 70.0])
        assert torch.equal(out, numpy_percentile(x.to(dt).float(), None, [30.0, 70.0]))


def test_argument_errors():
    x = torch.rand(4, 4)
    with pytest.raises(ValueError, match=r"q: expected <= 100"):
        sf.entropy_percentile(x, None, [50, 101])
    with pytest.raises(TypeError, match="q: expected a percentile"):
        sf.entropy_percentile(x, None, [])
    with pytest.raises(TypeError, match="valid: expected a bool tensor"):
        sf.entropy_percentile(x, x.long(), 50)
    with pytest.raises(ValueError, match="valid: expected the shape of entropy"):
        sf.entropy_percentile(x, torch.ones(3, dtype=torch.bool), 50)
    with pytest.raises(TypeError, match="entropy: expected a floating dtype"):
        sf.entropy_percentile(x.long(), None, 50)
