"""ohem_cross_entropy against an fp64 sort-based reference (U2PL's rule), on every backend and dtype."""

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast.ops.ohem import _select_rank_op
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, grad_tol, make_logits, tol


def ohem64(x, target, threshold=0.7, min_kept=100000, ignore_index=255):
    """Loss and gradient in fp64, written from the rule with a full sort (not from the reference)."""
    xd = x.detach().double().requires_grad_()
    t = target.long()
    valid = t != ignore_index
    safe = torch.where(valid, t, torch.zeros_like(t))
    p = torch.softmax(xd.detach(), 1).gather(1, safe.unsqueeze(1)).squeeze(1)
    if min_kept >= int(valid.sum()):
        keep = valid
    else:
        limit = threshold
        if min_kept > 0:
            kth = float(p[valid].sort().values[min_kept - 1])
            limit = max(limit, kth) if kth == kth else limit
        keep = valid & (p <= limit)
    ce = F.cross_entropy(xd, safe, reduction="none")
    n = int(keep.sum())
    loss = ce[keep].sum() / n if n else xd.sum() * 0
    loss.backward()
    return loss.detach(), xd.grad, keep


def make_target(n, c, h, w, ignore_frac=0.2, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, c, (n, h, w), generator=g)
    t[torch.rand(n, h, w, generator=g) < ignore_frac] = 255
    return t.to(dtype)


def check(backend, x, t, dtype=torch.float32, **kw):
    with sf.backend(backend):
        loss = sf.ohem_cross_entropy(x, t, **kw)
    g_out = torch.tensor(1.7)
    (g,) = torch.autograd.grad(loss, x, g_out)
    ref_loss, ref_g, keep = ohem64(x.to(dtype), t, **kw)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    rtol, atol = tol(dtype)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    assert g.dtype == x.dtype and g.shape == x.shape
    grtol, gatol = grad_tol(dtype)
    torch.testing.assert_close(g.double(), ref_g * 1.7, rtol=grtol, atol=gatol)
    return keep


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c", [2, 19])
def test_matches_fp64_sort(backend, dtype, layout, c):
    x = make_logits(2, c, 9, 11, dtype=dtype, layout=layout, requires_grad=True)
    t = make_target(2, c, 9, 11)
    valid = int((t != 255).sum())
    for min_kept in (0, 1, 40, valid - 1):
        keep = check(backend, x, t, dtype, threshold=0.3, min_kept=min_kept)
        assert 0 < int(keep.sum()) < valid  # the mined case, neither everything nor nothing


@pytest.mark.parametrize("backend", ALL)
def test_min_kept_at_or_above_the_valid_count_keeps_every_valid_pixel(backend):
    x = make_logits(2, 5, 6, 7, requires_grad=True)
    t = make_target(2, 5, 6, 7)
    valid = int((t != 255).sum())
    for min_kept in (valid, valid + 1, 10**9):
        keep = check(backend, x, t, threshold=0.0, min_kept=min_kept)
        assert int(keep.sum()) == valid
    with sf.backend(backend):
        plain = sf.pseudo_label_cross_entropy(x, t)
        torch.testing.assert_close(sf.ohem_cross_entropy(x, t, 0.0, valid), plain)


@pytest.mark.parametrize("backend", ALL)
def test_ties_at_the_kth_value_are_all_kept(backend):
    # 30 pixels share one logits row and one label: the 10th smallest p lies inside the tie.
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 4, 6, 8, generator=g) * 3
    t = torch.randint(0, 4, (1, 6, 8), dtype=torch.uint8, generator=g)
    flat = v.view(4, -1)
    flat[:, :30] = torch.tensor([[-20.0], [2.0], [2.5], [1.0]])  # p of class 0, ~1e-10, the smallest of all
    t.view(-1)[:30] = 0
    x = v.requires_grad_()
    keep = check(backend, x, t, threshold=0.0, min_kept=10)
    assert int(keep.sum()) == 30


@pytest.mark.parametrize("backend", ALL)
def test_threshold_above_every_p_keeps_them_all_and_zero_threshold_keeps_only_the_hardest(backend):
    x = make_logits(1, 3, 5, 5, requires_grad=True)
    t = make_target(1, 3, 5, 5, ignore_frac=0.0)
    assert int(check(backend, x, t, threshold=1.0, min_kept=3).sum()) == 25
    assert int(check(backend, x, t, threshold=0.0, min_kept=3).sum()) == 3
    assert int(check(backend, x, t, threshold=0.0, min_kept=0).sum()) == 0  # p > 0 everywhere: nothing kept


@pytest.mark.parametrize("backend", ALL)
def test_all_ignored_or_nothing_kept_gives_zero_loss_and_gradient(backend):
    x = make_logits(2, 5, 4, 3, requires_grad=True)
    ignored = torch.full((2, 4, 3), 255, dtype=torch.uint8)
    some = make_target(2, 5, 4, 3, ignore_frac=0.0)
    for t, kw in ((ignored, dict(min_kept=5)), (ignored, dict(min_kept=0)), (some, dict(threshold=0.0, min_kept=0))):
        with sf.backend(backend):
            loss = sf.ohem_cross_entropy(x, t, **kw)
        (g,) = torch.autograd.grad(loss, x)
        assert float(loss.detach()) == 0.0
        assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("backend", ALL)
def test_nan_rows_are_never_mined_but_count_when_everything_is_kept(backend):
    v = torch.randn(1, 3, 4, 5)
    v[0, :, 0, 0] = float("nan")
    t = make_target(1, 3, 4, 5, ignore_frac=0.0)
    x = v.requires_grad_()
    with sf.backend(backend):
        mined = sf.ohem_cross_entropy(x, t, threshold=0.5, min_kept=3)
        everything = sf.ohem_cross_entropy(x, t, threshold=0.5, min_kept=20)
    assert torch.isfinite(mined) and torch.isnan(everything)
    if backend != "reference":  # plain PyTorch's softmax backward spreads the NaN row's NaN even with a 0 weight
        (g,) = torch.autograd.grad(mined, x)
        assert torch.isfinite(g).all() and torch.count_nonzero(g[0, :, 0, 0]) == 0
    # min_kept reaching into the NaN rows: the threshold stays, the NaN pixel is still not kept
    with sf.backend(backend):
        deep = sf.ohem_cross_entropy(x, t, threshold=0.5, min_kept=19)
    assert torch.isfinite(deep)


@pytest.mark.parametrize("backend", FUSED)
def test_select_rank_equals_sort(backend):
    g = torch.Generator().manual_seed(3)
    v = torch.randn(3001, generator=g)
    v[:40] = v[0]
    v[40:60] = -0.0
    v[60:70] = 0.0
    v[70:75] = float("nan")
    v[75:80] = float("inf")
    v[80:85] = -float("inf")
    v = v[torch.randperm(v.numel(), generator=g)]
    ordered = v.sort().values  # NaN last
    for rank in (0, 1, 2, 100, 1500, 2990, 2995, 2996, 3000):
        got = _select_rank_op(v, rank, backend)
        want = ordered[rank]
        assert got.dtype == torch.float32 and got.dim() == 0
        assert (torch.isnan(got) and torch.isnan(want)) or got == want, (rank, got, want)


@pytest.mark.parametrize("backend", ["cpp"])
def test_large_shape_matches_the_reference(backend):
    x = make_logits(1, 19, 129, 129, requires_grad=True)
    t = make_target(1, 19, 129, 129, ignore_frac=0.1)
    keep = check(backend, x, t, threshold=0.7, min_kept=2000)
    assert 2000 <= int(keep.sum()) < int((t != 255).sum())


@pytest.mark.parametrize("backend", FUSED)
def test_fullgraph_compile_matches_eager(backend):
    torch._dynamo.reset()
    x = make_logits(2, 5, 6, 7, requires_grad=True)
    t = make_target(2, 5, 6, 7)

    def loss_fn(z, y):
        return sf.ohem_cross_entropy(z, y, 0.5, 20) * 2

    with sf.backend(backend):
        eager = loss_fn(x, t)
        (ge,) = torch.autograd.grad(eager, x)
        comp = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(x, t)
        (gc,) = torch.autograd.grad(comp, x)
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(gc, ge)


def test_module_matches_function_and_refuses_bad_options():
    x = make_logits(2, 5, 6, 7)
    t = make_target(2, 5, 6, 7)
    module = sf.OhemCrossEntropy(0.6, 30)
    assert "min_kept=30" in repr(module)
    torch.testing.assert_close(module(x, t), sf.ohem_cross_entropy(x, t, 0.6, 30))
    with pytest.raises(ValueError, match="threshold"):
        sf.OhemCrossEntropy(threshold=1.5)
    with pytest.raises(ValueError, match="min_kept"):
        sf.OhemCrossEntropy(min_kept=-1)
    with pytest.raises(TypeError, match="min_kept"):
        sf.ohem_cross_entropy(x, t, 0.7, 10.5)
    with pytest.raises(TypeError, match="target"):
        sf.ohem_cross_entropy(x, t.float())
    with pytest.raises(ValueError, match="target"):
        sf.ohem_cross_entropy(x, t[:, :3])
    bad = t.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(IndexError, match="target"):
        sf.ohem_cross_entropy(x, bad, 0.7, 10)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("min_kept", [0, 60, 10**6])
def test_size_gives_the_loss_of_the_upsampled_logits(backend, align_corners, min_kept):
    """size=(H, W): the loss and gradient of F.interpolate's bilinear upsampling, min_kept counting
    the target's pixels; the module passes size and align_corners on."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 5, 5, 6, generator=g) * 3).requires_grad_()
    t = make_target(2, 5, 13, 17)
    up = F.interpolate(x, size=(13, 17), mode="bilinear", align_corners=align_corners)
    expected = ohem64(up, t, 0.5, min_kept)[0]
    with sf.backend(backend):
        loss = sf.ohem_cross_entropy(x, t, 0.5, min_kept, size=(13, 17), align_corners=align_corners)
        (grad,) = torch.autograd.grad(loss, x)
        module = sf.OhemCrossEntropy(0.5, min_kept)(x, t, size=(13, 17), align_corners=align_corners)
        plain = sf.ohem_cross_entropy(up, t, 0.5, min_kept)
    (expected_grad,) = torch.autograd.grad(plain, x)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(module, loss)
    with pytest.raises(ValueError, match="target: expected shape"):
        sf.ohem_cross_entropy(x, t, size=(13, 16))
