"""One rule for non-finite logits on every backend: at a pixel that counts, what the plain-PyTorch
reference computes in fp32 (a row of all -inf, or with +inf or NaN, has no softmax: NaN confidence
and entropy, never confident, a NaN loss and gradient); a pixel that does not count has no effect.
Thresholds of exactly 0 and 1 decide alike everywhere."""

import math

import pytest
import torch

import semiseg_fast as sf

from ..helpers import FUSED

INF, NAN = math.inf, math.nan
ROWS = [
    [-INF, -INF, -INF, -INF],
    [INF, 0.0, 1.0, 2.0],
    [NAN, 0.0, 1.0, 2.0],
    [0.0, -16.6355, -30.0, -30.0],  # confidence within an ulp of 1
    [-INF, 3.0, -INF, -INF],  # confidence exactly 1
    [0.5, -1.0, 2.0, 0.0],
]


def _logits():
    return torch.tensor(ROWS, dtype=torch.float32).T.reshape(1, 4, 1, len(ROWS)).contiguous()


def _same(a, b):
    torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-5, atol=1e-6)


def _run(backend, fn):
    with sf.backend(backend):
        return fn()


@pytest.mark.parametrize("backend", FUSED)
def test_pixel_stats(backend):
    x = _logits()
    got, ref = _run(backend, lambda: sf.pixel_stats(x)), _run("reference", lambda: sf.pixel_stats(x))
    _same(got.confidence, ref.confidence)
    _same(got.entropy, ref.entropy)
    assert torch.isnan(got.confidence[0, 0, :3]).all()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("inf_target", [1, 0])  # 0: the target is the +inf class itself
def test_cross_entropy_and_its_gradient(backend, inf_target):
    target = torch.tensor([[[0, inf_target, 2, 0, 1, 2]]])

    def run(b):
        x = _logits().requires_grad_()
        with sf.backend(b):
            per_pixel = sf.pseudo_label_cross_entropy(x, target, reduction="none")
            (g,) = torch.autograd.grad(sf.pseudo_label_cross_entropy(x, target, reduction="sum"), x)
        return per_pixel.detach(), g

    (loss, grad), (ref_loss, ref_grad) = run(backend), run("reference")
    _same(loss, ref_loss)
    assert torch.isnan(loss[0, 0, :3]).all() and torch.isfinite(loss[0, 0, 3:]).all()
    assert torch.isnan(grad[0, :, 0, :3]).all() and torch.isfinite(grad[0, :, 0, 3:]).all()
    _same(grad[..., 3:], ref_grad[..., 3:])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_fixmatch_never_counts_a_row_without_softmax_as_confident(backend, threshold):
    student, teacher = torch.zeros(1, 4, 1, len(ROWS)), _logits()
    got = _run(backend, lambda: sf.fixmatch_loss(student, teacher, threshold, return_mask_ratio=True))
    ref = _run("reference", lambda: sf.fixmatch_loss(student, teacher, threshold, return_mask_ratio=True))
    _same(got[1], ref[1])
    _same(got[0], ref[0])
    confident = 3 if threshold < 1 else 1  # the three finite rows, or only the exactly-1 one
    assert got[1].item() == pytest.approx(confident / len(ROWS))


@pytest.mark.parametrize("backend", FUSED)
def test_pixels_that_do_not_count_have_no_effect(backend):
    x = _logits().requires_grad_()
    target = torch.tensor([[[255, 255, 255, 0, 1, 2]]])
    with sf.backend(backend):
        loss = sf.pseudo_label_cross_entropy(x, target)
        (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and (g[..., :3] == 0).all()
    with sf.backend("reference"):
        _same(loss, sf.pseudo_label_cross_entropy(x, target))


@pytest.mark.parametrize("backend", FUSED)
def test_pseudoseg_over_a_row_without_softmax_is_nan(backend):
    decoder = _logits()
    student = torch.zeros_like(decoder)
    got = _run(backend, lambda: sf.pseudoseg_consistency_loss(student, decoder, decoder))
    assert torch.isnan(got) and torch.isnan(
        _run("reference", lambda: sf.pseudoseg_consistency_loss(student, decoder, decoder))
    )
