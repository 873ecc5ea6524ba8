"""cps_loss against an fp64 ground truth built from two FixMatch-style terms, on every backend."""

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, grad_tol, make_logits, stats64, tol


def cps64(a, b, threshold=0.0, ignore_mask=None, ignore_index=255, normalizer="valid", targets_a=None, targets_b=None):
    """(loss, d loss / d a, d loss / d b, mask ratio) in fp64."""
    if ignore_mask is None:
        valid = torch.ones(a.shape[:1] + a.shape[2:], dtype=torch.bool)
    elif ignore_mask.dtype == torch.bool:
        valid = ~ignore_mask
    else:
        valid = ignore_mask != ignore_index
    pseudo = []
    for x, given in ((a, targets_a), (b, targets_b)):
        if given is None:
            conf, label, _ = stats64(x)
        else:
            label, conf = given[0].long(), given[1].double()
        pseudo.append((label, conf))
    loss, grads, trained = 0.0, [], 0
    for x, (label, conf) in zip((a, b), reversed(pseudo)):
        mask = valid & (label != ignore_index) & ~conf.isnan()
        if threshold > 0:
            mask &= conf >= threshold
        xd = x.detach().double().requires_grad_()
        ce = F.cross_entropy(xd, torch.where(mask, label, 0), reduction="none")
        total = torch.where(mask, ce, torch.zeros_like(ce)).sum()
        d = {"valid": float(valid.sum()), "confident": float(mask.sum()), "total": float(valid.numel())}.get(
            normalizer, normalizer
        )
        term = total / d if d else total * 0
        term.backward()
        loss += term.detach()
        grads.append(xd.grad)
        trained += float(mask.sum())
    return loss, grads[0], grads[1], trained / max(2 * float(valid.sum()), 1.0)


def away_from(threshold, *logits):
    """True when no pixel's confidence is within 1e-4 of the threshold (where fp32 rounding may flip it)."""
    return all(((stats64(x)[0] - threshold).abs() > 1e-4).all() for x in logits)


def pair(n, c, h, w, dtype=torch.float32, layout="nchw", threshold=0.0):
    for _ in range(100):
        v = [torch.randn(n, c, h, w) * torch.rand(n, 1, h, w) * 12 for _ in range(2)]
        a = make_logits(n, c, h, w, dtype=dtype, layout=layout, values=v[0], requires_grad=True)
        other = "nchw" if layout != "nchw" else "channels_last"
        b = make_logits(n, c, h, w, dtype=dtype, layout=other, values=v[1], requires_grad=True)
        if away_from(threshold, a, b):
            return a, b
    raise AssertionError("could not draw logits away from the threshold")


def check(backend, a, b, dtype=torch.float32, upstream=1.0, **kw):
    with sf.backend(backend):
        loss, ratio = sf.cps_loss(a, b, return_mask_ratio=True, **kw)
    ga, gb = torch.autograd.grad(loss * upstream, (a, b))
    ref_loss, ref_ga, ref_gb, ref_ratio = cps64(a, b, **kw)
    rtol, atol = tol(dtype)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    assert ratio.item() == pytest.approx(ref_ratio, abs=1e-6)
    for g, ref, x in ((ga, ref_ga, a), (gb, ref_gb, b)):
        assert g.dtype == x.dtype and g.shape == x.shape
        torch.testing.assert_close(g.double(), ref * upstream, rtol=grad_tol(dtype)[0], atol=grad_tol(dtype)[1])
    return loss, ga, gb


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c,threshold", [(2, 0.0), (21, 0.9), (150, 0.5)])
def test_matches_fp64(backend, dtype, layout, c, threshold):
    a, b = pair(2, c, 5, 7, dtype=dtype, layout=layout, threshold=threshold)
    mask = torch.zeros(2, 5, 7, dtype=torch.int64)
    mask[:, :2] = 255
    check(backend, a, b, dtype=dtype, threshold=threshold, ignore_mask=mask)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("normalizer", ["valid", "confident", "total", 10.0])
def test_normalizers_bool_mask_and_upstream_gradient(backend, normalizer):
    a, b = pair(2, 21, 5, 7, threshold=0.7)
    mask = torch.rand(2, 5, 7) < 0.3
    check(backend, a, b, upstream=2.5, threshold=0.7, ignore_mask=mask, normalizer=normalizer)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_given_targets_replace_a_networks_pseudo_labels(backend, which):
    """targets_a trains b (and targets_b trains a); labels at ignore_index train nothing."""
    a, b = pair(2, 6, 4, 5, threshold=0.5)
    g = torch.Generator().manual_seed(1)
    targets = {}
    for name in ("a", "b") if which == "both" else (which,):
        label = torch.randint(0, 6, (2, 4, 5), generator=g).to(torch.uint8)
        label[0, 0] = 255
        conf = torch.rand(2, 4, 5, generator=g)
        conf[(conf - 0.5).abs() < 1e-3] = 0.9
        targets[f"targets_{name}"] = (label, conf)
    check(backend, a, b, threshold=0.5, **targets)


@pytest.mark.parametrize("backend", FUSED)
def test_each_network_gets_its_own_terms_gradient(backend):
    """The gradient of a is that of CE(a, pseudo-labels of b) alone, and a network that does not
    require a gradient gets none while the other still does."""
    a, b = pair(1, 5, 3, 4)
    with sf.backend(backend):
        loss = sf.cps_loss(a, b)
        ga = torch.autograd.grad(loss, a)[0]
        alone = sf.fixmatch_loss(a, b.detach(), threshold=0.0)
        torch.testing.assert_close(ga, torch.autograd.grad(alone, a)[0], rtol=1e-6, atol=1e-8)
        loss = sf.cps_loss(a, b.detach())
        loss.backward()
    assert a.grad is not None and b.grad is None


@pytest.mark.parametrize("backend", ALL)
def test_all_ignored_gives_zero(backend):
    a, b = (make_logits(2, 21, 3, 5, requires_grad=True) for _ in range(2))  # confidences below 1
    for kw in [
        dict(ignore_mask=torch.ones(2, 3, 5, dtype=torch.bool)),
        dict(ignore_mask=torch.ones(2, 3, 5, dtype=torch.bool), normalizer="confident"),
        dict(threshold=1.0, normalizer="confident"),
    ]:
        with sf.backend(backend):
            loss, ratio = sf.cps_loss(a, b, return_mask_ratio=True, **kw)
        ga, gb = torch.autograd.grad(loss, (a, b))
        assert loss == 0 and ratio == 0 and torch.all(ga == 0) and torch.all(gb == 0)


@pytest.mark.parametrize("backend", FUSED)
def test_gradcheck_fp64(backend):
    a = make_logits(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    b = make_logits(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    f = lambda a, b: sf.cps_loss(a, b, normalizer="total")
    with sf.backend(backend):
        assert torch.autograd.gradcheck(f, (a, b), eps=1e-3, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (10, 14), (20, 28), (13, 17)])
def test_at_the_decoder_resolution(backend, align_corners, size):
    """With size=, the loss of both logits upsampled by F.interpolate, gradients at the logits' size."""
    a, b = pair(2, 6, 5, 7)
    mask = torch.rand(2, *size) < 0.2
    with sf.backend(backend):
        loss = sf.cps_loss(a, b, mask, 0.3, size=size, align_corners=align_corners)
    ga, gb = torch.autograd.grad(loss, (a, b))
    low = [x.detach().double().requires_grad_() for x in (a, b)]
    ua, ub = (F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners) for x in low)
    ref = cps64(ua, ub, 0.3, mask)
    ref_ga, ref_gb = torch.autograd.grad((ua * ref[1]).sum() + (ub * ref[2]).sum(), low)  # chain rule to (h, w)
    torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga.double(), ref_ga, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb.double(), ref_gb, rtol=1e-4, atol=1e-6)


def test_triton_is_deterministic_when_asked_at_the_decoder_resolution():
    a, b = pair(2, 6, 5, 7)
    with sf.backend("triton"):
        torch.use_deterministic_algorithms(True)
        try:
            grads = [torch.autograd.grad(sf.cps_loss(a, b, size=(13, 17)), (a, b)) for _ in range(2)]
        finally:
            torch.use_deterministic_algorithms(False)
        loose = torch.autograd.grad(sf.cps_loss(a, b, size=(13, 17)), (a, b))
    assert all(torch.equal(x, y) for x, y in zip(*grads))
    torch.testing.assert_close(grads[0], loose, rtol=1e-5, atol=1e-8)


def test_cpp_every_instruction_set_and_thread_count_agree():
    ops = torch.ops.semiseg_fast
    a, b = pair(2, 21, 9, 11)
    before, threads = ops._cpp_kernel_isa(""), torch.get_num_threads()
    results = []
    try:
        for isa in ops._cpp_kernel_isas():
            for n in (1, 2):
                ops._cpp_kernel_isa(isa)
                torch.set_num_threads(n)
                with sf.backend("cpp"):
                    loss = sf.cps_loss(a, b, threshold=0.5, size=(33, 41), align_corners=True)
                results.append((isa, n, loss, *torch.autograd.grad(loss, (a, b))))
    finally:
        ops._cpp_kernel_isa(before)
        torch.set_num_threads(threads)
    for isa, n, *values in results:
        same = [r for r in results if r[0] == isa]
        assert all(torch.equal(x, y) for x, y in zip(values, same[0][2:])), (isa, n)  # threads: bitwise
        for x, y in zip(values, results[0][2:]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


def test_compiles_fullgraph_with_both_gradients():
    a, b = pair(2, 5, 4, 6)
    fn = torch.compile(lambda a, b: sf.cps_loss(a, b, threshold=0.5, size=(8, 12)) * 2, fullgraph=True)
    loss = fn(a, b)
    ref = sf.cps_loss(a, b, threshold=0.5, size=(8, 12)) * 2
    torch.testing.assert_close(loss, ref)
    for g, r in zip(torch.autograd.grad(loss, (a, b)), torch.autograd.grad(ref, (a, b))):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("backend", ALL)
def test_bad_arguments_are_refused_by_name(backend):
    a, b = pair(1, 4, 3, 5)
    label, conf = torch.zeros(1, 3, 5, dtype=torch.int64), torch.ones(1, 3, 5)
    cases = [
        (dict(logits_b=torch.randn(1, 4, 3, 6)), ValueError, "logits_b"),
        (dict(threshold=1.5), ValueError, "threshold"),
        (dict(normalizer="weighted"), ValueError, "normalizer"),
        (dict(targets_a=label), TypeError, "targets_a"),
        (dict(targets_a=(label.float(), conf)), TypeError, r"targets_a\[0\]"),
        (dict(targets_b=(label, conf.long())), TypeError, r"targets_b\[1\]"),
        (dict(targets_a=(label[:, :2], conf)), ValueError, r"targets_a\[0\]"),
        (dict(targets_b=(label + 4, conf)), IndexError, r"targets_b\[0\].*got 4 at \(n=0, h=0, w=0\)"),
        (dict(ignore_mask=torch.zeros(1, 3, 5)), TypeError, "ignore_mask"),
        (dict(size=(0, 4)), ValueError, "size"),
    ]
    with sf.backend(backend):
        for kw, error, match in cases:
            args = {"logits_a": a, "logits_b": b, **kw}
            with pytest.raises(error, match=match):
                sf.cps_loss(**args)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_non_finite_rows_follow_the_reference(backend, threshold):
    """A peer row without a softmax (all -inf) gives no target, at any threshold (its own term is NaN,
    as the reference's); a row of NaN at an ignored pixel trains nothing and gets a zero gradient."""
    v = [torch.randn(1, 5, 2, 3) * 4 for _ in range(2)]
    v[1][0, :, 0, 0] = float("-inf")
    v[0][0, :, 1, 2] = float("nan")
    ignored = torch.zeros(1, 2, 3, dtype=torch.bool)
    ignored[0, 1, 2] = True
    out = {}
    for be in ("reference", backend):
        a, b = (x.clone().requires_grad_() for x in v)
        with sf.backend(be):
            loss = sf.cps_loss(a, b, ignored, threshold=threshold)
        out[be] = (loss, *torch.autograd.grad(loss, (a, b)))
    ref, got = out["reference"], out[backend]
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-7, equal_nan=True)
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[1, 2] = False  # the reference's autograd carries the NaN there (0 * NaN); ours is exactly 0
    torch.testing.assert_close(got[1][..., keep], ref[1][..., keep], rtol=1e-5, atol=1e-7)
    assert got[1][0, :, 0, 0].eq(0).all() and got[1][0, :, 1, 2].eq(0).all()  # b not confident; ignored
