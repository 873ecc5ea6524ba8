import pytest
import torch

import semiseg_fast as sf
from semiseg_fast import reference
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, grad_tol, make_logits, tol


def pseudoseg64(student, decoder, sgc, **kw):
    """fp64 loss, gradient and mask ratio of the plain-PyTorch transcription."""
    zd = student.detach().double().requires_grad_()
    loss, ratio = reference.pseudoseg.pseudoseg_consistency_loss(
        zd, decoder.detach().double(), sgc.detach().double(), return_mask_ratio=True, **kw
    )
    (g,) = torch.autograd.grad(loss, zd)
    return loss.detach().double(), g, float(ratio)


def weak_views(n, c, h, w, dtype=torch.float32, layout="nchw"):
    p = make_logits(n, c, h, w, dtype=dtype, layout=layout, scale=4.0)
    m = make_logits(n, c, h, w, dtype=dtype, layout="channels_last" if layout == "nchw" else "nchw", scale=2.0)
    return p, m


def run(backend, *args, **kw):
    with sf.backend(backend):
        return sf.pseudoseg_consistency_loss(*args, **kw)


def check(backend, z, p, m, dtype=torch.float32, **kw):
    loss, ratio = run(backend, z, p, m, return_mask_ratio=True, **kw)
    (g,) = torch.autograd.grad(loss, z)
    ref_loss, ref_g, ref_ratio = pseudoseg64(z, p, m, **kw)
    rtol, atol = tol(dtype)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    assert ratio.item() == pytest.approx(ref_ratio, abs=1e-6)
    assert g.dtype == z.dtype and g.shape == z.shape
    torch.testing.assert_close(g.double(), ref_g, rtol=grad_tol(dtype)[0], atol=grad_tol(dtype)[1])
    return loss, g


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [2, 21, 150])
@pytest.mark.parametrize("soft", [True, False])
def test_matches_fp64(backend, dtype, layout, c, soft):
    z = make_logits(2, c, 5, 7, dtype=dtype, layout=layout, requires_grad=True)
    p, m = weak_views(2, c, 5, 7, dtype=dtype, layout=layout)
    valid = torch.ones(2, 5, 7, dtype=torch.bool)
    valid[:, 1:3, 2:5] = False  # a Cutout box
    check(backend, z, p, m, dtype=dtype, valid=valid, soft=soft)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("temperature,gamma", [(0.5, 0.5), (1.0, 0.3), (0.7, 1.0), (2.0, 0.0)])
@pytest.mark.parametrize("threshold", [0.0, 0.6])
def test_fusion_parameters(backend, temperature, gamma, threshold):
    z = make_logits(2, 19, 4, 6, requires_grad=True)
    p, m = weak_views(2, 19, 4, 6)
    check(backend, z, p, m, temperature=temperature, gamma=gamma, threshold=threshold)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("normalizer", ["valid", "confident", "total", 10.0])
def test_normalizers_and_integer_valid(backend, normalizer):
    z = make_logits(2, 21, 5, 7, requires_grad=True)
    p, m = weak_views(2, 21, 5, 7)
    valid = (torch.rand(2, 5, 7) > 0.3).to(torch.uint8)
    check(backend, z, p, m, valid=valid, threshold=0.5, normalizer=normalizer)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("soft", [True, False])
def test_many_classes(backend, soft):
    z = make_logits(1, 300, 3, 5, requires_grad=True)
    p, m = weak_views(1, 300, 3, 5)
    check(backend, z, p, m, soft=soft, threshold=0.01)


@pytest.mark.parametrize("backend", ALL)
def test_calibrated_fusion_is_the_target(backend):
    """With T=1 and the student's softmax equal to q, the soft loss is the entropy of q and the
    gradient vanishes; calibrated_fusion matches the transcription."""
    p, m = weak_views(2, 7, 3, 4)
    with sf.backend(backend):
        q = sf.calibrated_fusion(p, m, temperature=0.5)
        scale = sf.ops.logit_scale(p, m)
    torch.testing.assert_close(q, reference.pseudoseg.calibrated_fusion(p, m), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scale, reference.pseudoseg.logit_scale(p, m), rtol=1e-6, atol=0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2, 3, 4))
    z = q.double().log().requires_grad_()
    loss = run(backend, z, p.double(), m.double(), temperature=0.5)
    entropy = -(q.double() * q.double().log()).sum(dim=1).mean()
    torch.testing.assert_close(loss.double(), entropy, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss, z)
    assert g.abs().max() < 1e-6


@pytest.mark.parametrize("backend", ALL)
def test_hard_labels_are_argmax_of_fusion(backend):
    p, m = weak_views(2, 5, 4, 4)
    z = make_logits(2, 5, 4, 4, requires_grad=True)
    label = reference.pseudoseg.calibrated_fusion(p, m).argmax(dim=1).to(torch.uint8)
    with sf.backend(backend):
        hard = sf.pseudoseg_consistency_loss(z, p, m, soft=False)
        ce = sf.pseudo_label_cross_entropy(z, label)
    torch.testing.assert_close(hard, ce, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", FUSED)
def test_weak_views_get_no_gradient(backend):
    z = make_logits(1, 5, 3, 4, requires_grad=True)
    p = make_logits(1, 5, 3, 4, requires_grad=True)
    m = make_logits(1, 5, 3, 4, requires_grad=True)
    run(backend, z, p, m).backward()
    assert p.grad is None and m.grad is None and z.grad is not None


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fp64(backend):
    z = make_logits(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    p, m = weak_views(1, 4, 2, 3, dtype=torch.float64)
    for soft in (True, False):
        f = lambda z, soft=soft: run(backend, z, p, m, soft=soft)
        assert torch.autograd.gradcheck(f, (z,), eps=1e-3, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("backend", FUSED)
def test_grad_output_scaling(backend):
    z = make_logits(1, 5, 3, 4, requires_grad=True)
    p, m = weak_views(1, 5, 3, 4)
    for normalizer in ["valid", "confident"]:
        loss = run(backend, z, p, m, threshold=0.3, normalizer=normalizer)
        g1 = torch.autograd.grad(loss, z, retain_graph=True)[0].clone()
        g3 = torch.autograd.grad(loss, z, torch.tensor(3.0))[0]
        torch.testing.assert_close(g3, 3 * g1)


@pytest.mark.parametrize("backend", ALL)
def test_nothing_valid_gives_zero(backend):
    z = make_logits(2, 21, 3, 5, requires_grad=True)
    p, m = weak_views(2, 21, 3, 5)
    loss, ratio = run(backend, z, p, m, valid=torch.zeros(2, 3, 5, dtype=torch.bool), return_mask_ratio=True)
    (g,) = torch.autograd.grad(loss, z)
    assert loss == 0 and ratio == 0 and torch.all(g == 0)


@pytest.mark.parametrize("backend", ALL)
def test_non_finite_weak_logits_give_nan_not_zero(backend):
    """One NaN poisons the global scale; without a threshold that must show in the loss."""
    z = make_logits(1, 5, 3, 4, requires_grad=True)
    p, m = weak_views(1, 5, 3, 4)
    p[0, 2, 1, 1] = float("nan")
    assert torch.isnan(run(backend, z, p, m))


@pytest.mark.parametrize("backend", ALL)
def test_argument_errors(backend):
    z = torch.randn(2, 5, 3, 4)
    ps = sf.pseudoseg_consistency_loss
    cases = [
        (ValueError, r"sgc_logits: expected the shape of decoder_logits", (z, z, z[:, :4]), {}),
        (ValueError, r"decoder_logits: expected the shape of student_logits", (z[:, :4], z, z), {}),
        (TypeError, r"sgc_logits: expected a floating dtype", (z, z, z.int()), {}),
        (ValueError, r"gamma: expected <= 1.0", (z, z, z), dict(gamma=1.5)),
        (ValueError, r"temperature: expected > 0.0", (z, z, z), dict(temperature=0)),
        (ValueError, r"threshold: expected <= 1.0", (z, z, z), dict(threshold=2)),
        (TypeError, r"soft: expected a bool", (z, z, z), dict(soft=1)),
        (ValueError, r"valid: expected shape", (z, z, z), dict(valid=torch.ones(2, 3, dtype=torch.bool))),
        (TypeError, r"valid: expected a bool or integer dtype", (z, z, z), dict(valid=torch.ones(2, 3, 4))),
        (
            ValueError,
            r"normalizer: expected one of 'valid', 'confident', 'total'",
            (z, z, z),
            dict(normalizer="weighted"),
        ),
    ]
    with sf.backend(backend):
        for exc, msg, args, kw in cases:
            with pytest.raises(exc, match=msg):
                ps(*args, **kw)
