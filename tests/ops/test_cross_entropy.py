import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, ce64, grad_tol, make_logits, tol


def make_target(n, c, h, w, dtype=torch.uint8, ignore_frac=0.2, ignore_index=255):
    t = torch.randint(0, c, (n, h, w))
    t[torch.rand(n, h, w) < ignore_frac] = ignore_index
    return t.to(dtype)


def run(backend, x, t, **kw):
    with sf.backend(backend):
        loss = sf.pseudo_label_cross_entropy(x, t, **kw)
    return loss


def loss_and_grad(backend, x, t, **kw):
    loss = run(backend, x, t, **kw)
    g_out = torch.randn_like(loss) if loss.dim() else torch.tensor(1.0)
    g = torch.autograd.grad(loss, x, g_out)[0]
    return loss, g, g_out


def check(backend, x, t, dtype=torch.float32, **kw):
    loss, g, g_out = loss_and_grad(backend, x, t, **kw)
    ref_loss, ref_g = ce64(x, t, **kw)
    if loss.dim():
        ref_g = ce64(x, t, **kw)[1] * g_out.double().unsqueeze(1)
    rtol, atol = tol(dtype)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    assert g.dtype == x.dtype and g.shape == x.shape
    grtol, gatol = grad_tol(dtype)
    torch.testing.assert_close(g.double(), ref_g, rtol=grtol, atol=gatol)
    return loss, g


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [2, 19, 21, 150])
def test_matches_fp64(backend, dtype, layout, c):
    x = make_logits(2, c, 5, 7, dtype=dtype, layout=layout, requires_grad=True)
    check(backend, x, make_target(2, c, 5, 7), dtype=dtype)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalizer", ["valid", "weighted", "total", 7.5])
def test_reductions_weights_and_normalizers(backend, reduction, normalizer):
    x = make_logits(2, 21, 5, 7, requires_grad=True)
    t = make_target(2, 21, 5, 7, dtype=torch.int64)
    w = torch.rand(2, 5, 7)
    check(backend, x, t, weight=w, reduction=reduction, normalizer=normalizer)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("tdtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_target_dtypes(backend, tdtype):
    x = make_logits(1, 19, 4, 6, requires_grad=True)
    ignore = 255 if tdtype == torch.uint8 else -1
    t = make_target(1, 19, 4, 6, dtype=tdtype, ignore_index=ignore)
    assert (t == ignore).any()
    check(backend, x, t, ignore_index=ignore)


@pytest.mark.parametrize("backend", ALL)
def test_bool_mask_weight_and_strided_target(backend):
    x = make_logits(2, 19, 5, 7, requires_grad=True)
    t = make_target(2, 19, 10, 7)[:, ::2]  # non-contiguous target view
    w = torch.rand(2, 7, 5).transpose(1, 2) > 0.5  # non-contiguous bool mask
    check(backend, x, t, weight=w)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("c", [300, 1024])
def test_many_classes(backend, c):
    x = make_logits(1, c, 3, 5, layout="channels_last", requires_grad=True)
    check(backend, x, make_target(1, c, 3, 5, dtype=torch.int64))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_gradient(backend, reduction):
    x = make_logits(2, 21, 3, 5, requires_grad=True)
    t = torch.full((2, 3, 5), 255, dtype=torch.uint8)
    loss, g, _ = loss_and_grad(backend, x, t, reduction=reduction)
    assert torch.all(loss == 0) and torch.all(g == 0)
    loss, g, _ = loss_and_grad(
        backend, x, make_target(2, 21, 3, 5), weight=torch.zeros(2, 3, 5), reduction=reduction, normalizer="weighted"
    )
    assert torch.all(loss == 0) and torch.all(g == 0) and not torch.isnan(g).any()


@pytest.mark.parametrize("backend", ALL)
def test_large_magnitudes(backend):
    x = (make_logits(2, 21, 3, 5, scale=1.0) * 1e4).requires_grad_()
    loss, g = check(backend, x, make_target(2, 21, 3, 5))
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("backend", ALL)
def test_exact_ties(backend):
    x = torch.zeros(1, 4, 2, 2)
    x[0, 1:3] = 1.0
    x.requires_grad_()
    t = torch.tensor([[[1, 2], [0, 3]]], dtype=torch.uint8)
    check(backend, x, t)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_confident_true_class_gradient(backend, dtype):
    # p_y close to 1: p_y - 1 cancels in low precision. Our true-class gradient must be no
    # worse than 4x PyTorch's own error against fp64 (the pattern Liger-Kernel tests).
    n, c, h, w = 1, 21, 4, 8
    t = torch.randint(0, c, (n, h, w))
    base = torch.randn(n, c, h, w)
    margin = torch.linspace(6.0, 14.0, h * w).view(1, h, w)
    base.scatter_(1, t.unsqueeze(1), (base.max(dim=1).values + margin).unsqueeze(1))
    x = base.to(dtype).requires_grad_()
    ours = torch.autograd.grad(run(backend, x, t.to(torch.uint8), reduction="sum"), x)[0]
    xt = x.detach().clone().requires_grad_()
    torch_g = torch.autograd.grad(F.cross_entropy(xt, t, reduction="sum"), xt)[0]
    _, exact = ce64(x, t, reduction="sum")
    pick = lambda g: g.double().gather(1, t.unsqueeze(1)).squeeze(1)
    err_ours = (pick(ours) - pick(exact)).abs().max()
    err_torch = (pick(torch_g) - pick(exact)).abs().max()
    assert err_ours <= 4 * err_torch + 1e-12, (err_ours, err_torch)


@pytest.mark.parametrize("backend", FUSED)
def test_confident_loss_keeps_precision(backend):
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 20.0
    loss = run(backend, x, torch.zeros(1, 1, 1, dtype=torch.uint8))
    exact, _ = ce64(x, torch.zeros(1, 1, 1, dtype=torch.uint8))
    assert loss > 0
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", FUSED)
def test_weight_gradient(backend):
    x = make_logits(2, 5, 3, 4, requires_grad=True)
    t = make_target(2, 5, 3, 4)
    for reduction, normalizer in [("mean", "valid"), ("mean", "weighted"), ("sum", "valid"), ("none", "valid")]:
        w = torch.rand(2, 3, 4, requires_grad=True)
        loss = run(backend, x, t, weight=w, reduction=reduction, normalizer=normalizer)
        g_out = torch.randn_like(loss)
        gw = torch.autograd.grad(loss, w, g_out)[0]
        w2 = w.detach().clone().requires_grad_()
        ref = run("reference", x, t, weight=w2, reduction=reduction, normalizer=normalizer)
        gw_ref = torch.autograd.grad(ref, w2, g_out)[0]
        torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fp64(backend):
    # fp32 math inside: finite-difference step and tolerances sized for fp32 round-off.
    x = make_logits(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, 2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[0, 3, 255], [2, 1, 1]]])
    f = lambda x, w: run(backend, x, t, weight=w, reduction="sum")
    assert torch.autograd.gradcheck(f, (x, w), eps=1e-3, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("backend", FUSED)
def test_no_gradient_work_without_grad(backend):
    x = make_logits(1, 5, 3, 3)
    loss = run(backend, x, make_target(1, 5, 3, 3))
    assert not loss.requires_grad
    with torch.no_grad():
        loss2 = run(backend, x.requires_grad_(), make_target(1, 5, 3, 3))
    assert not loss2.requires_grad


@pytest.mark.parametrize("backend", FUSED)
def test_gradient_accumulates_with_other_losses(backend):
    # The same logits feed two losses: the fused gradient must add, not overwrite.
    x = make_logits(1, 5, 3, 4, requires_grad=True)
    t = make_target(1, 5, 3, 4)
    (run(backend, x, t) + x.float().pow(2).mean()).backward()
    x2 = x.detach().clone().requires_grad_()
    (run("reference", x2, t) + x2.pow(2).mean()).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", FUSED)
def test_backward_twice_through_retained_graph(backend):
    x = make_logits(1, 5, 3, 4, requires_grad=True)
    loss = run(backend, x, make_target(1, 5, 3, 4))
    g1 = torch.autograd.grad(loss, x, retain_graph=True)[0].clone()
    g2 = torch.autograd.grad(loss, x, torch.tensor(2.0), retain_graph=True)[0]
    g3 = torch.autograd.grad(loss, x)[0]
    torch.testing.assert_close(g2, 2 * g1)
    torch.testing.assert_close(g3, g1)


@pytest.mark.parametrize("backend", FUSED)
def test_logits_unchanged(backend):
    x = make_logits(2, 7, 3, 5, requires_grad=True)
    before = x.detach().clone()
    run(backend, x, make_target(2, 7, 3, 5)).backward()
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("backend", ALL)
def test_tensor_normalizer(backend):
    x = make_logits(2, 7, 3, 5, requires_grad=True)
    t = make_target(2, 7, 3, 5)
    w = torch.rand(2, 3, 5, requires_grad=True)
    denom = torch.tensor(3.25)
    loss = run(backend, x, t, weight=w, normalizer=denom)
    gx, gw = torch.autograd.grad(loss, (x, w))
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = run("reference", x2, t, weight=w2, normalizer=3.25)
    rx, rw = torch.autograd.grad(ref, (x2, w2))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    zero = run(backend, x, t, normalizer=torch.tensor(0.0))
    assert zero == 0 and torch.all(torch.autograd.grad(zero, x)[0] == 0)
