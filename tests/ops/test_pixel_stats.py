import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, grad_tol, make_logits, stats64, tol


def run(backend, x, temperature=1.0):
    with sf.backend(backend):
        return sf.pixel_stats(x, temperature=temperature)


def check_stats(out, x, temperature=1.0, rtol=2e-5, atol=2e-6):
    conf, label, ent = stats64(x, temperature)
    c = x.shape[1]
    assert out.confidence.dtype == torch.float32 and out.entropy.dtype == torch.float32
    assert out.label.dtype == (torch.uint8 if c <= 255 else torch.int64)
    torch.testing.assert_close(out.confidence.double(), conf, rtol=rtol, atol=atol)
    torch.testing.assert_close(out.entropy.double(), ent, rtol=rtol, atol=atol * 10)
    assert torch.equal(out.label.long(), label)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [2, 19, 21, 150])
def test_matches_fp64(backend, dtype, layout, c):
    x = make_logits(2, c, 5, 7, dtype=dtype, layout=layout)
    check_stats(run(backend, x), x, rtol=tol(dtype)[0], atol=tol(dtype)[1])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("c", [300, 1024])
def test_many_classes(backend, c):
    x = make_logits(1, c, 3, 5, layout="channels_last")
    check_stats(run(backend, x), x)


@pytest.mark.parametrize("backend", ALL)
def test_temperature(backend):
    x = make_logits(1, 21, 4, 6)
    check_stats(run(backend, x, temperature=0.5), x, temperature=0.5)
    check_stats(run(backend, x, temperature=3.0), x, temperature=3.0)


@pytest.mark.parametrize("backend", FUSED)
def test_single_pixel_and_batch_of_one(backend):
    x = make_logits(1, 19, 1, 1)
    check_stats(run(backend, x), x)


@pytest.mark.parametrize("backend", FUSED)
def test_exact_ties_pick_first_class(backend):
    x = torch.zeros(1, 5, 2, 3)
    x[0, 1] = 2.0
    x[0, 3] = 2.0  # tie between classes 1 and 3 everywhere
    x[0, :, 1, 2] = 0.0  # all five classes tie at this pixel
    out = run(backend, x)
    assert out.label[0, 0, 0] == 1 and out.label[0, 1, 2] == 0
    check_stats(out, x)


@pytest.mark.parametrize("backend", FUSED)
def test_confident_pixels_keep_tiny_entropy(backend):
    # p_max = 1 - ~1e-9: log(s) would round to 0; log1p(rest) keeps the entropy.
    x = torch.zeros(1, 4, 1, 2)
    x[0, 0] = 25.0
    out = run(backend, x)
    _, _, ent = stats64(x)
    torch.testing.assert_close(out.entropy.double(), ent, rtol=1e-4, atol=0)
    assert (out.entropy > 0).all()


@pytest.mark.parametrize("backend", ALL)
def test_large_magnitudes(backend):
    x = make_logits(2, 21, 3, 5, scale=1.0) * 1e4
    out = run(backend, x)
    assert torch.isfinite(out.confidence).all() and torch.isfinite(out.entropy).all()
    check_stats(out, x, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_nan_logits_give_nan_stats(backend):
    x = make_logits(1, 6, 2, 2)
    x[0, 2, 1, 1] = float("nan")
    out = run(backend, x)
    assert torch.isnan(out.confidence[0, 1, 1]) and torch.isnan(out.entropy[0, 1, 1])
    assert torch.isfinite(out.confidence[0, 0]).all()


@pytest.mark.parametrize("backend", FUSED)
def test_half_precision_inputs_decode_exactly(backend):
    # Every finite fp16 value, as class 0 against a class-1 logit of 0: confidence is a
    # function of the decoded value only, so any decoding error shows up.
    vals = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    vals = vals[torch.isfinite(vals)]
    n = vals.numel()
    x = torch.zeros(1, 2, 1, n, dtype=torch.float16)
    x[0, 0, 0] = vals
    out = run(backend, x)
    check_stats(out, x)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_of_confidence_and_entropy(backend, dtype, layout):
    x = make_logits(2, 21, 3, 4, dtype=dtype, layout=layout, requires_grad=True)
    gc, ge = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for temperature in (1.0, 0.5):
        out = run(backend, x, temperature)
        g = torch.autograd.grad((out.confidence * gc).sum() + (out.entropy * ge).sum(), x)[0]
        xd = x.detach().double().requires_grad_()
        conf, _, ent = stats64(xd, temperature)
        g_ref = torch.autograd.grad((conf * gc).sum() + (ent * ge).sum(), xd)[0]
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), g_ref, rtol=grad_tol(dtype)[0], atol=grad_tol(dtype)[1] * 10)


@pytest.mark.parametrize("backend", FUSED)
def test_gradient_of_entropy_alone(backend):
    # Entropy minimisation: only one output used, its incoming gradient an expanded scalar.
    x = make_logits(2, 19, 5, 3, requires_grad=True)
    g = torch.autograd.grad(run(backend, x).entropy.mean(), x)[0]
    xd = x.detach().double().requires_grad_()
    g_ref = torch.autograd.grad(stats64(xd)[2].mean(), xd)[0]
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fp64(backend):
    # Kernels compute in fp32 whatever the input dtype, so the finite differences use a step
    # and tolerances sized for fp32 round-off; a wrong formula is off by O(1).
    x = make_logits(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x):
        out = run(backend, x)
        return out.confidence, out.entropy

    assert torch.autograd.gradcheck(f, (x,), eps=1e-3, atol=2e-3, rtol=1e-2)
