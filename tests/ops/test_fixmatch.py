import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, fixmatch64, grad_tol, make_logits, tol


def teacher_logits(n, c, h, w, dtype=torch.float32, layout="nchw", threshold=0.95):
    """Teacher logits with a mix of confident and unconfident pixels, none within 1e-4 of the
    threshold (where fp32 rounding could legitimately flip the decision)."""
    for _ in range(100):
        v = torch.randn(n, c, h, w) * torch.rand(n, 1, h, w) * 12
        x = make_logits(n, c, h, w, dtype=dtype, layout=layout, values=v)
        conf = fixmatch64(x, x, threshold)[3]
        if ((conf - threshold).abs() > 1e-4).all():
            return x
    raise AssertionError("could not draw teacher logits away from the threshold")


def run(backend, s, t, **kw):
    with sf.backend(backend):
        return sf.fixmatch_loss(s, t, **kw)


def check(backend, s, t, dtype=torch.float32, **kw):
    loss, ratio = run(backend, s, t, return_mask_ratio=True, **kw)
    g = torch.autograd.grad(loss, s)[0]
    ref_loss, ref_g, ref_ratio, _ = fixmatch64(s, t, **kw)
    rtol, atol = tol(dtype)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    assert ratio.item() == pytest.approx(ref_ratio, abs=1e-6)
    assert g.dtype == s.dtype and g.shape == s.shape
    torch.testing.assert_close(g.double(), ref_g, rtol=grad_tol(dtype)[0], atol=grad_tol(dtype)[1])
    return loss, g


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [2, 19, 21, 150])
def test_matches_fp64(backend, dtype, layout, c):
    s = make_logits(2, c, 5, 7, dtype=dtype, layout=layout, requires_grad=True)
    t = teacher_logits(2, c, 5, 7, dtype=dtype, layout="nchw" if layout != "nchw" else "channels_last")
    mask = torch.zeros(2, 5, 7, dtype=torch.int64)
    mask[:, :2] = 255
    check(backend, s, t, dtype=dtype, threshold=0.95, ignore_mask=mask)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("normalizer", ["valid", "confident", "total", 10.0])
def test_normalizers_and_bool_mask(backend, normalizer):
    s = make_logits(2, 21, 5, 7, requires_grad=True)
    t = teacher_logits(2, 21, 5, 7, threshold=0.7)
    mask = torch.rand(2, 5, 7) < 0.3
    check(backend, s, t, threshold=0.7, ignore_mask=mask, normalizer=normalizer)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("c", [300, 1024])
def test_many_classes(backend, c):
    s = make_logits(1, c, 3, 5, requires_grad=True)
    t = teacher_logits(1, c, 3, 5, threshold=0.5)
    check(backend, s, t, threshold=0.5)


@pytest.mark.parametrize("backend", ALL)
def test_all_ignored_or_unconfident_gives_zero(backend):
    s = make_logits(2, 21, 3, 5, requires_grad=True)
    t = make_logits(2, 21, 3, 5)
    for kw in [
        dict(ignore_mask=torch.ones(2, 3, 5, dtype=torch.bool)),
        dict(ignore_mask=torch.ones(2, 3, 5, dtype=torch.bool), normalizer="confident"),
        dict(threshold=1.0, normalizer="confident"),
    ]:
        loss, ratio = run(backend, s, t, return_mask_ratio=True, **kw)
        g = torch.autograd.grad(loss, s)[0]
        assert loss == 0 and ratio == 0 and torch.all(g == 0)


@pytest.mark.parametrize("backend", ALL)
def test_all_confident_is_plain_cross_entropy(backend):
    s = make_logits(2, 19, 4, 5, requires_grad=True)
    t = make_logits(2, 19, 4, 5)
    loss, ratio = run(backend, s, t, threshold=0.0, return_mask_ratio=True)
    with sf.backend(backend):
        ce = sf.pseudo_label_cross_entropy(s, t.argmax(dim=1).to(torch.uint8))
    assert ratio == 1
    torch.testing.assert_close(loss, ce, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ALL)
def test_large_magnitudes(backend):
    s = (make_logits(2, 21, 3, 5, scale=1.0) * 1e4).requires_grad_()
    t = make_logits(2, 21, 3, 5, scale=1.0) * 1e4
    loss, g = check(backend, s, t, threshold=0.9)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("backend", FUSED)
def test_teacher_gets_no_gradient(backend):
    s = make_logits(1, 5, 3, 4, requires_grad=True)
    t = make_logits(1, 5, 3, 4, requires_grad=True)
    loss = run(backend, s, t, threshold=0.0)
    loss.backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fp64(backend):
    s = make_logits(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    t = teacher_logits(1, 4, 2, 3, dtype=torch.float64, threshold=0.6)
    f = lambda s: run(backend, s, t, threshold=0.6, normalizer="total")
    assert torch.autograd.gradcheck(f, (s,), eps=1e-3, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("backend", FUSED)
def test_grad_output_scaling(backend):
    s = make_logits(1, 5, 3, 4, requires_grad=True)
    t = teacher_logits(1, 5, 3, 4, threshold=0.5)
    for normalizer in ["valid", "confident"]:
        loss = run(backend, s, t, threshold=0.5, normalizer=normalizer)
        g1 = torch.autograd.grad(loss, s, retain_graph=True)[0].clone()
        g3 = torch.autograd.grad(loss, s, torch.tensor(3.0))[0]
        torch.testing.assert_close(g3, 3 * g1)
