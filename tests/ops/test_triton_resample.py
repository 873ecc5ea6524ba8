"""The Triton kernels with ``size=``: each equals the same kernel without it applied to
``F.interpolate(logits, size, mode="bilinear", align_corners=...)``, and its gradient the adjoint of
that interpolation applied to the full-resolution gradient (run on CPU tensors under the interpreter)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semiseg_fast.base import Normalizer, Reduction
from semiseg_fast.triton.cross_entropy import cross_entropy
from semiseg_fast.triton.fixmatch import fixmatch
from semiseg_fast.triton.pixel_stats import pixel_stats, pixel_stats_backward
from semiseg_fast.triton.pseudoseg import logit_scale, pseudoseg_loss
from tests.helpers import make_logits

# (C, (h, w), (H, W), align_corners, dtype, layout): together every scale factor (1x on one axis and 2x
# on the other, 2, 4, 8, non-integer, downsampling), odd sizes, both align_corners, single-chunk and
# chunked class counts, fp32/bf16/fp64 and NCHW/channels_last/strided views.
CASES = [
    (21, (5, 7), (13, 11), False, torch.float32, "nchw"),
    (2, (5, 7), (13, 11), True, torch.float32, "channels_last"),
    (21, (9, 9), (4, 5), False, torch.bfloat16, "view"),
    (2, (4, 6), (8, 12), True, torch.float64, "nchw"),
    (2, (3, 5), (12, 20), False, torch.float32, "view"),
    (2, (2, 3), (16, 24), True, torch.float32, "nchw"),
    (21, (6, 5), (6, 10), False, torch.float32, "channels_last"),
    (150, (3, 4), (7, 9), True, torch.float32, "nchw"),
]
IDS = [f"C{c}-{h}x{w}to{H}x{W}-ac{int(ac)}-{str(dt)[6:]}-{lay}" for c, (h, w), (H, W), ac, dt, lay in CASES]


@pytest.fixture
def deterministic():
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(saved)


def up(x, size, ac):
    """The upsampled logits the kernels must behave as if they read (interpolated in fp32, as they do)."""
    return F.interpolate(x.detach().float(), size=size, mode="bilinear", align_corners=ac)


def adjoint(g_full, x, ac):
    """d/dx of sum(F.interpolate(x) * g_full): the gradient the kernels scatter, in fp64."""
    xd = torch.zeros(x.shape, dtype=torch.float64, requires_grad=True)
    out = F.interpolate(xd, size=tuple(g_full.shape[2:]), mode="bilinear", align_corners=ac)
    return torch.autograd.grad((out * g_full.double()).sum(), xd)[0]


def close(a, b, dtype=torch.float32, rtol=1e-5, atol=1e-5):
    if dtype in (torch.float16, torch.bfloat16) and a.dtype == dtype:
        rtol, atol = 1e-2, 1e-3
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True)


def inputs(case, n=2, seed=0):
    c, (h, w), size, ac, dt, lay = case
    torch.manual_seed(seed)
    return make_logits(n, c, h, w, dt, lay), size, ac, dt


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pixel_stats(case):
    x, size, ac, dt = inputs(case)
    t = 0.7
    conf, label, ent = pixel_stats(x, t, size, ac)
    xu = up(x, size, ac)
    rc, rl, re = pixel_stats(xu, t)
    assert conf.shape == label.shape == ent.shape == (x.shape[0], *size)
    close(conf, rc)
    close(ent, re)
    assert torch.equal(label, rl)
    gc, ge = torch.randn(conf.shape), torch.randn(conf.shape)
    for a, b in ((gc, ge), (None, ge), (gc, None)):
        g = pixel_stats_backward(x, conf, label, ent, a, b, t, size, ac)
        assert g.shape == x.shape and g.dtype == x.dtype
        g_full = pixel_stats_backward(xu, rc, rl, re, a, b, t)
        close(g, adjoint(g_full, x, ac), dt)


@pytest.mark.parametrize("case", CASES[:6], ids=IDS[:6])
def test_cross_entropy(case):
    x, size, ac, dt = inputs(case)
    n, c = x.shape[:2]
    xu = up(x, size, ac)
    target = torch.randint(0, c, (n, *size))
    target[:, 0, :2] = 255  # ignored pixels
    weight = torch.rand(n, *size)
    for wt, red, norm, need_ce in [
        (None, Reduction.MEAN, Normalizer.VALID, False),
        (weight, Reduction.MEAN, Normalizer.WEIGHTED, True),
        (weight, Reduction.NONE, Normalizer.VALID, True),
        (None, Reduction.SUM, Normalizer.VALID, False),
    ]:
        args = (target, wt, 255, red, norm, 0.0, None, True, need_ce)
        loss, grad, ce = cross_entropy(x, *args, size, ac)
        rloss, rgrad, rce = cross_entropy(xu, *args)
        close(loss, rloss)
        if need_ce:
            close(ce, rce)
        assert grad.shape == x.shape
        close(grad, adjoint(rgrad, x, ac), dt)
    loss, grad, _ = cross_entropy(
        x, target, None, 255, Reduction.MEAN, Normalizer.VALID, 0.0, None, False, False, size, ac
    )
    assert grad.numel() == 0


@pytest.mark.parametrize("case", [CASES[i] for i in (0, 2, 3, 5, 7)], ids=[IDS[i] for i in (0, 2, 3, 5, 7)])
def test_fixmatch(case):
    x, size, ac, dt = inputs(case)
    n, c = x.shape[:2]
    teacher = make_logits(n, c, *x.shape[2:], dt, "nchw", scale=6.0)
    xu, tu = up(x, size, ac), up(teacher, size, ac)
    bool_mask = torch.rand(n, *size) < 0.3
    int_mask = torch.where(torch.rand(n, *size) < 0.3, 255, 1)
    for mask, norm in [(None, Normalizer.VALID), (bool_mask, Normalizer.CONFIDENT), (int_mask, Normalizer.TOTAL)]:
        args = (0.6, mask, 255, norm, 0.0, True)
        loss, ratio, grad, post = fixmatch(x, teacher, *args, size, ac)
        rloss, rratio, rgrad, rpost = fixmatch(xu, tu, *args)
        close(loss, rloss)
        close(ratio, rratio)
        close(post, rpost)
        close(grad, adjoint(rgrad, x, ac), dt)


@pytest.mark.parametrize("case", [CASES[i] for i in (0, 1, 2, 3, 4, 7)], ids=[IDS[i] for i in (0, 1, 2, 3, 4, 7)])
def test_pseudoseg(case):
    z, size, ac, dt = inputs(case)
    n, c, h, w = z.shape
    decoder = make_logits(n, c, h, w, dt, "nchw")
    sgc = make_logits(n, c, h, w, dt, "channels_last")
    zu, du, su = up(z, size, ac), up(decoder, size, ac), up(sgc, size, ac)
    scale = logit_scale(decoder, sgc, size, ac)
    close(scale, logit_scale(du, su))
    mask = torch.rand(n, *size) < 0.3
    for m, t, th, soft in [(None, 0.5, 0.0, False), (mask, 1.0, 0.0, True), (mask, 0.7, 0.3, True)]:
        args = (m, scale, 0.5, t, th, soft, Normalizer.VALID, 0.0, True)
        loss, ratio, grad, post = pseudoseg_loss(z, decoder, sgc, *args, size, ac)
        rloss, rratio, rgrad, rpost = pseudoseg_loss(zu, du, su, *args)
        close(loss, rloss)
        close(ratio, rratio)
        close(grad, adjoint(rgrad, z, ac), dt)


@pytest.mark.parametrize("case", [CASES[i] for i in (0, 2, 7)], ids=[IDS[i] for i in (0, 2, 7)])
def test_deterministic_mode_is_bitwise_reproducible(case, deterministic):
    x, size, ac, dt = inputs(case)
    n, c = x.shape[:2]
    xu = up(x, size, ac)
    target = torch.randint(0, c, (n, *size))
    target[:, 1] = 255
    teacher = make_logits(n, c, *x.shape[2:], dt, "nchw", scale=6.0)
    conf, label, ent = pixel_stats(x, 1.0, size, ac)
    gc, ge = torch.randn(conf.shape), torch.randn(conf.shape)
    runs = []
    for _ in range(2):
        runs.append(
            [
                cross_entropy(x, target, None, 255, Reduction.MEAN, Normalizer.VALID, 0.0, None, True, False, size, ac)[
                    1
                ],
                fixmatch(x, teacher, 0.5, None, 255, Normalizer.VALID, 0.0, True, size, ac)[2],
                pseudoseg_loss(x, teacher, x, None, torch.ones(()), 0.5, 0.5, 0.0, True, 0, 0.0, True, size, ac)[2],
                pixel_stats_backward(x, conf, label, ent, gc, ge, 1.0, size, ac),
            ]
        )
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    rgrad = cross_entropy(xu, target, None, 255, Reduction.MEAN, Normalizer.VALID, 0.0, None, True, False)[1]
    close(runs[0][0], adjoint(rgrad, x, ac), dt)
    rc, rl, re = pixel_stats(xu, 1.0)
    close(runs[0][3], adjoint(pixel_stats_backward(xu, rc, rl, re, gc, ge, 1.0), x, ac), dt)


def test_size_none_is_unchanged():
    """size=None takes the kernels' old path: no tables, the same results as without the arguments."""
    x = make_logits(2, 5, 4, 6)
    target = torch.randint(0, 5, (2, 4, 6))
    a = cross_entropy(x, target, None, 255, Reduction.MEAN, Normalizer.VALID, 0.0, None, True, False)
    b = cross_entropy(x, target, None, 255, Reduction.MEAN, Normalizer.VALID, 0.0, None, True, False, None, True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
