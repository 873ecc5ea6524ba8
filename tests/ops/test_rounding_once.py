"""Gradients of the fused losses are the fp32 gradient times the incoming gradient, rounded once
to the logits' dtype, for any incoming gradient.

The shapes and tolerances are those of a well-known cross-entropy kernel's own test (rows of 192
to 262144 classes, 1, 77 or 289 rows, logits ~ 0.1 * N(0, 1), atol 5e-5, rtol 1e-5), with rows as
pixels: logits (1, C, 1, rows), classes contiguous per pixel. On top of that: per-pixel weights,
ignored rows and random incoming gradients (per pixel for ``reduction="none"``, a random scalar
otherwise). The oracle computes in fp32 on the upcast logits and casts the gradient once.
Class counts above 4096 run on the C++ and reference backends only (see CASES for what else is
trimmed to keep CI short); C++ runs every case.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast import reference

CLASS_COUNTS = [192, 256, 512, 760, 1024, 1128, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144]
ROWS = [1, 77, 289]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATOL, RTOL = 5e-5, 1e-5
IGNORE = -100


@functools.lru_cache(maxsize=1)
def inputs(classes: int, rows: int, dtype_name: str):
    """(student, teacher, second teacher, target, weight, ignored rows, incoming per-pixel gradient,
    incoming scalar)."""
    g = torch.Generator().manual_seed(classes * 1000 + rows)
    dtype = DTYPES[dtype_name]

    def logits(scale):  # (rows, C) row-major, seen as (1, C, 1, rows): classes contiguous per pixel
        x = (scale * torch.randn(rows, classes, generator=g)).to(dtype)
        return x.t().reshape(1, classes, 1, rows)

    student = logits(0.1)
    teacher = logits(4.0)  # confident enough for some rows to pass a threshold
    sgc = logits(4.0)  # PseudoSeg's Grad-CAM logits
    target = torch.randint(0, classes, (1, 1, rows), generator=g)
    ignored = torch.rand(1, 1, rows, generator=g) < 0.1
    target[ignored] = IGNORE
    weight = torch.rand(1, 1, rows, generator=g)
    upstream = torch.randn(1, 1, rows, generator=g)
    scalar = torch.randn((), generator=g)
    return student, teacher, sgc, target, weight, ignored, upstream, scalar


# To keep CI short: Triton runs through its interpreter here, about a second per class chunk and
# program, so it gets single-chunk, multi-chunk and partial-chunk class counts with one program of
# pixels, and several programs at 192 and 1128 classes; the reference backend (eager PyTorch, 10 s
# a case there) skips the 289-row cases of 131072 and 262144 classes, which C++ runs.
TRITON = {(c, 1) for c in (192, 760, 1128, 4096)} | {(192, 77), (1128, 77)}


def runs(backend, classes, rows):
    if backend == "triton":
        return (classes, rows) in TRITON
    return backend == "cpp" or classes * rows < 131072 * 289


# Backends vary fastest, so that each input and its oracle are built once.
CASES = [
    (b, c, m, d)
    for c in CLASS_COUNTS
    for m in ROWS
    for d in DTYPES
    for b in ("reference", "cpp", "triton")
    if runs(b, c, m)
]


def _grad(fn, x, upstream):
    x = x.detach().requires_grad_()
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x, grad_outputs=upstream)
    return loss.detach(), g


_oracles: dict = {}


def as_images(t):
    """(1, C, 1, rows) -> (rows, C, 1, 1) and (1, 1, rows) -> (rows, 1, 1), and back: the same pixels
    as images of one pixel, where PyTorch's softmax runs over contiguous classes (several times
    faster than over the strided classes of the 4-d layout)."""
    return t.permute(3, 1, 2, 0) if t.dim() == 4 else t.permute(2, 1, 0)


def check(backend, fn, oracle, key, x, upstream):
    """``fn`` on ``backend`` against ``oracle`` (plain PyTorch, given every tensor through
    :func:`as_images`) on the fp32 upcast of ``x``; the oracle's answer is kept under ``key``."""
    if key not in _oracles:
        if len(_oracles) >= len(LOSSES):  # the large cases hold hundreds of MB each
            del _oracles[next(iter(_oracles))]
        loss, grad = _grad(oracle, as_images(x.float()), as_images(upstream) if upstream.dim() else upstream)
        _oracles[key] = (as_images(loss) if loss.dim() else loss), as_images(grad)
    want_loss, want_grad = _oracles[key]
    with sf.backend(backend):
        loss, grad = _grad(fn, x, upstream)
    assert grad.dtype == x.dtype
    torch.testing.assert_close(loss, want_loss, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(grad, want_grad.to(x.dtype), atol=ATOL, rtol=RTOL)


def weighted_ce(x, target, weight, reduction):
    ce = F.cross_entropy(x, target, ignore_index=IGNORE, reduction="none") * weight
    return ce if reduction == "none" else ce.sum() / (target != IGNORE).sum().clamp(min=1)  # 0 over nothing


def fixmatch_oracle(student, teacher, ignored, threshold):
    prob = teacher.float().softmax(1)
    conf, label = prob.max(1)
    keep = (conf >= threshold) & ~ignored
    ce = F.cross_entropy(student, label, reduction="none")
    return torch.where(keep, ce, torch.zeros_like(ce)).sum() / (~ignored).sum().clamp(min=1)


def cross_entropy_case(reduction):
    def case(x, teacher, sgc, target, weight, ignored, upstream, scalar):
        fn = lambda z: sf.pseudo_label_cross_entropy(z, target, weight, ignore_index=IGNORE, reduction=reduction)
        oracle = lambda z: weighted_ce(z, as_images(target), as_images(weight), reduction)
        return fn, oracle, upstream if reduction == "none" else scalar

    return case


def fixmatch_case(x, teacher, sgc, target, weight, ignored, upstream, scalar):
    threshold = 0.3
    fn = lambda z: sf.fixmatch_loss(z, teacher, threshold, ignore_mask=ignored)
    oracle = lambda z: fixmatch_oracle(z, as_images(teacher), as_images(ignored), threshold)
    return fn, oracle, scalar


def pseudoseg_case(soft):
    def case(x, teacher, sgc, target, weight, ignored, upstream, scalar):
        fn = lambda z: sf.pseudoseg_consistency_loss(z, teacher, sgc, valid=~ignored, soft=soft)
        oracle = lambda z: reference.pseudoseg.pseudoseg_consistency_loss(
            z, as_images(teacher.float()), as_images(sgc.float()), valid=as_images(~ignored), soft=soft
        )
        return fn, oracle, scalar

    return case


LOSSES = {
    "cross_entropy_none": cross_entropy_case("none"),
    "cross_entropy_mean": cross_entropy_case("mean"),
    "fixmatch": fixmatch_case,
    "pseudoseg_soft": pseudoseg_case(True),
    "pseudoseg_hard": pseudoseg_case(False),
}


@pytest.mark.parametrize("backend, classes, rows, dtype, loss", [case + (loss,) for case in CASES for loss in LOSSES])
def test_gradient_is_rounded_once(backend, classes, rows, dtype, loss):
    tensors = inputs(classes, rows, dtype)
    fn, oracle, upstream = LOSSES[loss](*tensors)
    check(backend, fn, oracle, (loss, classes, rows, dtype), tensors[0], upstream)


@pytest.mark.parametrize("cpp", [True, False], ids=["cpp_extension", "torch_ops"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_scaled_grad_rounds_once(monkeypatch, cpp, dtype):
    """Backward's one multiply: the C++ pass on CPU tensors, torch.mul into a ``dtype`` output
    elsewhere (CUDA, or without the extension); both keep the gradient's layout."""
    from semiseg_fast import _backend
    from semiseg_fast.ops._grad import scaled_grad

    if not cpp:
        monkeypatch.setattr(_backend, "cpp_available", lambda: False)
    grad = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last)
    for scale in (torch.tensor(0.1), torch.tensor(1.0), torch.randn(2, 3, 4)):
        out = scaled_grad(grad, scale, dtype)
        want = (grad * (scale.unsqueeze(1) if scale.dim() else scale)).to(dtype)
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, want)
