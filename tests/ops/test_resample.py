"""Every fused op with ``size=``: the same values and gradients as F.interpolate followed by the
op, against fp64 (the upsampling itself done in fp64), on every backend, for upsampling by 1, 2, 4
and 8, a non-integer factor, downsampling, both align_corners, every dtype and layout."""

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast.base.resample import axis_weights
from semiseg_fast.ops.pseudoseg import logit_scale
from semiseg_fast.reference import pseudoseg as ref_pseudoseg
from tests.helpers import ALL, DTYPES, FUSED, LAYOUTS, grad_tol, make_logits, stats64, tol

# (h, w) -> (H, W): factor 1, 2, 4, 8 (with odd sizes), non-integer, one axis only, downsampling
GRIDS = [
    ((4, 5), (4, 5)),
    ((3, 5), (6, 10)),
    ((3, 4), (12, 16)),
    ((2, 3), (16, 24)),
    ((5, 7), (13, 11)),
    ((3, 5), (3, 10)),
    ((9, 9), (4, 5)),
]
SIZE_IDS = [f"{h}x{w}-{H}x{W}" for (h, w), (H, W) in GRIDS]


def up64(x, size, align_corners):
    """fp64 copy of x that requires grad, and its bilinear upsampling (differentiable)."""
    x64 = x.detach().double().requires_grad_()
    return x64, F.interpolate(x64, size=size, mode="bilinear", align_corners=align_corners)


HALF = (torch.float16, torch.bfloat16)


def assert_grad(g, x, ref_g, dtype, backend):
    """A source element's gradient sums up to (H/h)(W/w) terms of either sign: its absolute error
    scales with the largest term, not with the sum."""
    assert g.shape == x.shape and g.dtype == x.dtype
    rtol, atol = grad_tol(dtype)
    if backend == "reference" and dtype in HALF:  # it upsamples in half precision, as research code does
        rtol, atol = 3e-2, 1e-2 * float(ref_g.abs().max())
    atol = max(atol, 1e-6 * float(ref_g.abs().max()))
    torch.testing.assert_close(g.double(), ref_g, rtol=rtol, atol=atol)


def assert_value(v, ref, dtype, backend):
    rtol, atol = tol(dtype)
    if backend == "reference" and dtype in HALF:
        rtol, atol = 2e-2, 1e-2
    torch.testing.assert_close(v.double(), ref.double(), rtol=rtol, atol=atol)


def target_map(n, c, size, generator=None):
    t = torch.randint(0, c, (n, *size), generator=generator)
    t[:, :1] = 255
    return t


def ce_case(backend, x, size, ac, dtype):
    n, c = x.shape[:2]
    t = target_map(n, c, size)
    weight = torch.rand(n, *size)
    with sf.backend(backend):
        loss = sf.pseudo_label_cross_entropy(x, t, weight, size=size, align_corners=ac)
    g = torch.autograd.grad(loss, x)[0]
    x64, u = up64(x, size, ac)
    valid = t != 255
    ce = F.cross_entropy(u, torch.where(valid, t, 0), reduction="none")
    ref = torch.where(valid, weight.double() * ce, 0.0).sum() / valid.sum()
    assert_value(loss, ref, dtype, backend)
    assert_grad(g, x, torch.autograd.grad(ref, x64)[0], dtype, backend)


def stats_case(backend, x, size, ac, dtype):
    n = x.shape[0]
    a, b = torch.rand(n, *size), torch.rand(n, *size)
    with sf.backend(backend):
        conf, label, ent = sf.pixel_stats(x, size=size, align_corners=ac)
    g = torch.autograd.grad((a * conf + b * ent).sum(), x)[0]
    x64, u = up64(x, size, ac)
    conf64, label64, ent64 = stats64(u)
    assert conf.shape == (n, *size) and label.shape == (n, *size)
    assert_value(conf, conf64, dtype, backend)
    assert_value(ent, ent64, torch.float32 if dtype == torch.float64 else dtype, backend)
    top2 = u.detach().topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # argmax ties within rounding may go either way
    if not (backend == "reference" and dtype in HALF):
        assert torch.equal(label.long()[clear], label64[clear])
    ref_g = torch.autograd.grad((a.double() * conf64 + b.double() * ent64).sum(), x64)[0]
    assert_grad(g, x, ref_g, dtype, backend)


def confident_teacher(n, c, h, w, size, ac, threshold):
    """Teacher logits whose upsampled confidences all keep 1e-4 away from the threshold."""
    for _ in range(100):
        t = torch.randn(n, c, h, w) * torch.rand(n, 1, h, w) * 8
        conf = stats64(F.interpolate(t.double(), size=size, mode="bilinear", align_corners=ac))[0]
        if ((conf - threshold).abs() > 1e-4).all():
            return t
    raise AssertionError("no teacher away from the threshold")


def fixmatch_case(backend, x, size, ac, dtype):
    n, c, h, w = x.shape
    teacher = confident_teacher(n, c, h, w, size, ac, 0.6).to(dtype)
    mask = torch.rand(n, *size) < 0.2
    with sf.backend(backend):
        loss, ratio = sf.fixmatch_loss(
            x, teacher, threshold=0.6, ignore_mask=mask, size=size, align_corners=ac, return_mask_ratio=True
        )
    g = torch.autograd.grad(loss, x)[0]
    x64, u = up64(x, size, ac)
    conf, label, _ = stats64(F.interpolate(teacher.double(), size=size, mode="bilinear", align_corners=ac))
    keep = (conf >= 0.6) & ~mask
    ref = torch.where(keep, F.cross_entropy(u, label, reduction="none"), 0.0).sum() / (~mask).sum()
    assert_value(loss, ref, dtype, backend)
    assert ratio.item() == pytest.approx(float(keep.sum()) / float((~mask).sum()), abs=1e-6)
    assert_grad(g, x, torch.autograd.grad(ref, x64)[0], dtype, backend)


def pseudoseg_case(backend, x, size, ac, dtype):
    n, c, h, w = x.shape
    dec, sgc = torch.randn(n, c, h, w).to(dtype), (torch.randn(n, c, h, w) * 2).to(dtype)
    valid = torch.rand(n, *size) > 0.2
    with sf.backend(backend):
        loss = sf.pseudoseg_consistency_loss(x, dec, sgc, valid, size=size, align_corners=ac)
        scale = logit_scale(dec, sgc, size=size, align_corners=ac)
    g = torch.autograd.grad(loss, x)[0]
    x64, u = up64(x, size, ac)
    up = lambda v: F.interpolate(v.double(), size=size, mode="bilinear", align_corners=ac)  # noqa: E731
    ref = ref_pseudoseg.pseudoseg_consistency_loss(u, up(dec), up(sgc), valid)
    assert_value(scale, ref_pseudoseg.logit_scale(up(dec), up(sgc)), dtype, backend)
    assert_value(loss, ref, dtype, backend)
    assert_grad(g, x, torch.autograd.grad(ref, x64)[0], dtype, backend)


CASES = {"ce": ce_case, "stats": stats_case, "fixmatch": fixmatch_case, "pseudoseg": pseudoseg_case}


# Triton runs in test_dtypes_and_layouts below (every op, dtype and layout); its sweep of grids
# and options is tests/ops/test_triton_resample.py, since the interpreter is slow.
@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("op", CASES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("grid", GRIDS, ids=SIZE_IDS)
def test_matches_interpolate_fp64(backend, op, align_corners, grid):
    (h, w), size = grid
    x = make_logits(2, 5, h, w, requires_grad=True)
    CASES[op](backend, x, size, align_corners, torch.float32)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op", CASES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(backend, op, dtype, layout):
    x = make_logits(2, 21, 5, 7, dtype=dtype, layout=layout, requires_grad=True)
    CASES[op](backend, x, (13, 11), True, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("c", [2, 150])
def test_class_counts(backend, c):
    x = make_logits(1, c, 4, 3, requires_grad=True)
    ce_case(backend, x, (9, 7), False, torch.float32)


def test_cpp_bands_and_threads_do_not_change_the_gradient():
    """The CPU backward has no atomics: each source row is summed in one order, whatever the
    number of threads; taller images span several bands of source rows."""
    x = make_logits(2, 19, 40, 9, requires_grad=True)
    t = target_map(2, 19, (157, 33))
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            with sf.backend("cpp"):
                loss = sf.pseudo_label_cross_entropy(x, t, size=(157, 33))
            grads.append(torch.autograd.grad(loss, x)[0])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
    x64, u = up64(x, (157, 33), False)
    valid = t != 255
    ref = torch.where(valid, F.cross_entropy(u, torch.where(valid, t, 0), reduction="none"), 0.0).sum() / valid.sum()
    torch.testing.assert_close(grads[0].double(), torch.autograd.grad(ref, x64)[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("align_corners", [False, True])
def test_axis_weights_are_torch_s(align_corners):
    """The taps reproduce F.interpolate on one axis (a one-hot input reads back each weight), up to
    the rounding of the source coordinate, which torch's kernels round in their own order."""
    for n_in, n_out in [(1, 5), (2, 9), (7, 3), (129, 513), (5, 13)]:
        a = axis_weights(n_in, n_out, align_corners)
        eye = torch.eye(n_in)[:, None, :, None]  # (n_in, 1, n_in, 1): image k is one-hot at row k
        taps = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=align_corners)[:, 0, :, 0]
        mine = torch.zeros(n_in, n_out)
        j = torch.arange(n_out)
        mine.index_put_((a.i0.long(), j), a.l0, accumulate=True)
        mine.index_put_((a.i1.long(), j), a.l1, accumulate=True)
        torch.testing.assert_close(mine, taps, rtol=0, atol=2e-7 * n_in)


def test_size_errors():
    x = make_logits(1, 3, 4, 4)
    t = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="size: expected None or"):
        sf.pseudo_label_cross_entropy(x, t, size=(8,))
    with pytest.raises(ValueError, match="size: expected None or"):
        sf.pixel_stats(x, size=(0, 8))
    with pytest.raises(TypeError, match="align_corners: expected a bool"):
        sf.pixel_stats(x, size=(8, 8), align_corners=1)
    with pytest.raises(ValueError, match=r"target: expected shape \(N, H, W\) = \(1, 8, 8\)"):
        sf.pseudo_label_cross_entropy(x, torch.zeros(1, 4, 4, dtype=torch.long), size=(8, 8))
    with pytest.raises(ValueError, match="teacher_logits: expected the shape of student_logits"):
        sf.fixmatch_loss(x, make_logits(1, 3, 8, 8), size=(8, 8))


def test_size_equal_to_the_input_is_the_plain_op():
    x = make_logits(2, 4, 5, 6, requires_grad=True)
    t = target_map(2, 4, (5, 6))
    plain = sf.pseudo_label_cross_entropy(x, t)
    same = sf.pseudo_label_cross_entropy(x, t, size=(5, 6), align_corners=True)
    assert torch.equal(plain, same)
