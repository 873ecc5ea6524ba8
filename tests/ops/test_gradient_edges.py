"""Gradients at the edges of the fused losses: fp16 under loss scaling, non-finite logits at
pixels that do not count, -inf (masked) classes, tensor normalizers and second derivatives."""

import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ALL, FUSED

N, C, H, W = 1, 3, 8, 8
INF = float("inf")


def grad_of(backend, loss_fn, x, scale=1.0):
    x = x.detach().clone().requires_grad_()
    with sf.backend(backend):
        (loss_fn(x) * scale).backward()
    return x.grad


def losses(target, teacher, decoder, sgc, normalizer):
    return {
        "cross_entropy": lambda x: sf.pseudo_label_cross_entropy(x, target, normalizer=normalizer),
        "fixmatch": lambda x: sf.fixmatch_loss(x, teacher, threshold=0.0, normalizer=normalizer),
        "fixmatch_confident": lambda x: sf.fixmatch_loss(x, teacher, threshold=0.5, normalizer="confident"),
        "pseudoseg": lambda x: sf.pseudoseg_consistency_loss(x, decoder, sgc, normalizer=normalizer),
    }


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("loss", ["cross_entropy", "fixmatch", "fixmatch_confident", "pseudoseg"])
def test_fp16_gradient_under_loss_scaling(backend, loss):
    # A large denominator makes d loss / d x ~1e-6, subnormal in fp16; GradScaler's scale 2**16 is
    # not representable in fp16. Both must be handled in fp32 and rounded once, like PyTorch does.
    x = (torch.randn(N, C, H, W) * 3).half()
    target = torch.randint(0, C, (N, H, W), dtype=torch.uint8)
    teacher, decoder, sgc = (torch.randn(N, C, H, W) * 4 for _ in range(3))
    fn = losses(target, teacher, decoder, sgc, normalizer=1e6)[loss]
    scale = 65536.0
    truth = grad_of("reference", fn, x.double(), scale)
    g = grad_of(backend, fn, x, scale)
    assert g.dtype == torch.float16 and torch.isfinite(g).all()
    assert truth.abs().max() > 1e-2
    # As good as the fp64 gradient rounded once to fp16 (one subnormal step = 6e-8).
    torch.testing.assert_close(g.double(), truth.half().double(), rtol=1e-3, atol=6e-8)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_per_pixel_loss_gradient_scaled_in_fp32(backend, dtype):
    # Confident pixels (|p - y| ~ 1e-5) under a per-pixel incoming gradient of 1e5, which fp16
    # cannot hold although every product fits.
    target = torch.randint(0, C, (N, H, W), dtype=torch.uint8)
    x = (torch.nn.functional.one_hot(target.long(), C).permute(0, 3, 1, 2) * 12 + torch.randn(N, C, H, W)).to(dtype)

    def fn(v):
        return sf.pseudo_label_cross_entropy(v, target, reduction="none").sum()

    truth = grad_of("reference", fn, x.double(), 1e5)
    g = grad_of(backend, fn, x, 1e5)
    assert torch.isfinite(g).all()
    rtol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}[dtype]
    # The saved gradient is p - y in the logits' dtype: in fp16, |p| < 6e-5 is subnormal (steps of 6e-8).
    torch.testing.assert_close(g.double(), truth, rtol=rtol, atol=1e5 * 6e-8)


@pytest.mark.parametrize("backend", FUSED)
def test_non_finite_logits_where_pixels_do_not_count_get_zero_gradient(backend):
    x = torch.randn(N, C, 1, 8)
    x[0, 1, 0, 0] = INF
    x[0, 2, 0, 1] = float("nan")
    target = torch.zeros(N, 1, 8, dtype=torch.uint8)
    target[0, 0, :2] = 255
    ignored = torch.zeros(N, 1, 8, dtype=torch.bool)
    ignored[0, 0, :2] = True
    teacher = torch.randn(N, C, 1, 8)
    cases = {
        "cross_entropy": lambda v: sf.pseudo_label_cross_entropy(v, target),
        "fixmatch": lambda v: sf.fixmatch_loss(v, teacher, threshold=0.0, ignore_mask=ignored),
        "pseudoseg": lambda v: sf.pseudoseg_consistency_loss(v, teacher, teacher, valid=~ignored),
    }
    for name, fn in cases.items():
        g = grad_of(backend, fn, x)
        assert (g[..., :2] == 0).all(), name
        torch.testing.assert_close(g[..., 2:], grad_of("reference", fn, x)[..., 2:], msg=name)


@pytest.mark.parametrize("backend", ALL)
def test_masked_class_minus_inf(backend):
    x = torch.tensor([0.0, -INF, 1.0, 0.5]).reshape(1, 4, 1, 1).repeat(1, 1, 1, 3)
    conf64 = torch.softmax(x.double(), 1)
    p = conf64[0, :, 0, 0]
    truth_entropy = -(p[p > 0] * p[p > 0].log()).sum()
    for out in ("confidence", "entropy"):
        xg = x.clone().requires_grad_()
        with sf.backend(backend):
            stats = sf.pixel_stats(xg)
            getattr(stats, out).sum().backward()
        torch.testing.assert_close(stats.entropy, torch.full((1, 1, 3), float(truth_entropy)))
        xr = x.double().requires_grad_()
        with sf.backend("reference"):
            getattr(sf.pixel_stats(xr), out).sum().backward()
        assert torch.isfinite(xg.grad).all(), out
        torch.testing.assert_close(xg.grad.double(), xr.grad, msg=out)


@pytest.mark.parametrize("backend", FUSED)
def test_tensor_normalizer_gets_its_gradient(backend):
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    target = torch.randint(0, C, (N, H, W), dtype=torch.uint8)
    grads = {}
    for b in ("reference", backend):
        d = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
        with sf.backend(b):
            sf.pseudo_label_cross_entropy(x, target, normalizer=d).backward()
        grads[b] = d.grad
    assert grads[backend] is not None
    torch.testing.assert_close(grads[backend], grads["reference"])


@pytest.mark.parametrize("backend", FUSED)
def test_every_path_to_a_second_derivative_is_refused(backend):
    """The kernels' gradient has no path back to the logits, so a graph built through it would
    give a wrong second derivative (zeros, with allow_unused / materialize_grads): every way of
    building one is refused with the same message; first-order gradients stay exact."""
    x = torch.randn(N, C, H, W, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, C, (N, H, W), dtype=torch.uint8)
    for fn in (
        lambda v: sf.pseudo_label_cross_entropy(v, target),
        lambda v: sf.fixmatch_loss(v, v.detach() * 2, threshold=0.0),
        lambda v: sf.pseudoseg_consistency_loss(v, v.detach() * 2, v.detach()),
        lambda v: sf.pixel_stats(v).entropy.sum(),
    ):
        with sf.backend(backend):
            (g,) = torch.autograd.grad(fn(x), x)
            with pytest.raises(RuntimeError, match="differentiable once"):
                torch.autograd.grad(fn(x), x, create_graph=True)
            with pytest.raises(RuntimeError, match="differentiable once"):
                fn(x).backward(create_graph=True)
            with pytest.raises(RuntimeError, match="differentiable once"):
                torch.autograd.grad(fn(x), x, create_graph=True, allow_unused=True, materialize_grads=True)
            with pytest.raises(RuntimeError, match="differentiable once"):
                torch.func.grad(fn)(x.detach())
        with sf.backend("reference"):
            (truth,) = torch.autograd.grad(fn(x), x)
            (second,) = torch.autograd.grad(torch.func.grad(fn)(x).pow(2).sum(), x)  # the reference can
        torch.testing.assert_close(g, truth)
        assert second.abs().sum() > 0


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_the_returned_loss_may_be_modified_in_place(backend, reduction):
    x = torch.randn(N, C, H, W, requires_grad=True)
    target = torch.randint(0, C, (N, H, W), dtype=torch.uint8)
    with sf.backend(backend):
        loss = sf.pseudo_label_cross_entropy(x, target, reduction=reduction)
    loss *= 0.5
    loss.sum().backward()
    with sf.backend("reference"):
        (truth,) = torch.autograd.grad(0.5 * sf.pseudo_label_cross_entropy(x, target, reduction=reduction).sum(), x)
    torch.testing.assert_close(x.grad, truth)


@pytest.mark.parametrize("backend", FUSED)
def test_weight_gradient_with_an_ignore_index_outside_the_target_dtype(backend):
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8)  # 257 would wrap to 1 in uint8
    grads = {}
    for b in ("reference", backend):
        w = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]], dtype=torch.float64, requires_grad=True)
        with sf.backend(b):
            sf.pseudo_label_cross_entropy(x, target, weight=w, ignore_index=257, normalizer="weighted").backward()
        grads[b] = w.grad
    torch.testing.assert_close(grads[backend], grads["reference"], rtol=1e-5, atol=1e-6)  # fp32 inside
