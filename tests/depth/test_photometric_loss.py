"""sf.photometric_loss against the fp64 reference: values, gradients, winners, dtypes, layouts, errors."""

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.reference.photometric import photometric_loss as reference_loss
from tests.helpers import ALL

TOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _frames(s, n, h, w, dtype, identity, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, h, w, generator=g).to(dtype)
    warped = torch.rand(s, n, 3, h, w, generator=g).to(dtype)
    ident = torch.rand(s, n, 3, h, w, generator=g).to(dtype) if identity else None
    if channels_last:
        target = target.contiguous(memory_format=torch.channels_last)
        warped = warped.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return target, warped, ident


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SOURCES = [(1, False), (2, False), (1, True), (2, True)]
SIZES = [(2, 2), (5, 7), (16, 9)]
# Every combination on the reference and C++; the Triton interpreter is slow: every dtype and
# source case at the small sizes, fp32 at the largest.
CASES = [
    (backend, dtype, s, identity, h, w)
    for backend in ALL
    for dtype in DTYPES
    for s, identity in SOURCES
    for h, w in SIZES
    if backend != "triton" or (h, w) != SIZES[-1] or dtype == torch.float32
]


@pytest.mark.parametrize("backend,dtype,s,identity,h,w", CASES)
def test_matches_the_reference(backend, dtype, s, identity, h, w):
    target, warped, ident = _frames(s, 2, h, w, dtype, identity, seed=h + w + s)
    warped.requires_grad_()
    with sf.backend(backend):
        loss, winner = sf.photometric_loss(target, warped, ident, return_winner=True)
        (grad,) = torch.autograd.grad(loss, warped)
    w64 = warped.detach().double().requires_grad_()
    ref, ref_winner = reference_loss(
        target.double(), w64, None if ident is None else ident.double(), return_winner=True
    )
    (ref_grad,) = torch.autograd.grad(ref, w64)
    fp64_reference = backend == "reference" and dtype == torch.float64  # the reference keeps fp64
    assert loss.dtype == (torch.float64 if fp64_reference else torch.float32) and loss.dim() == 0
    assert grad.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol * float(ref_grad.abs().max()))
    assert (winner == ref_winner).float().mean() > 0.99  # up to near-ties decided in fp32


@pytest.mark.parametrize("backend", ALL)
def test_any_strides(backend):
    target, warped, ident = _frames(2, 2, 6, 8, torch.float32, True, channels_last=True)
    expected = reference_loss(target.contiguous(), warped.contiguous(), ident)
    with sf.backend(backend):
        torch.testing.assert_close(sf.photometric_loss(target, warped, ident), expected)


def test_an_incoming_gradient_scales_the_kept_one():
    target, warped, _ = _frames(2, 1, 5, 5, torch.float32, False)
    warped.requires_grad_()
    (g1,) = torch.autograd.grad(sf.photometric_loss(target, warped), warped)
    (g3,) = torch.autograd.grad(3.0 * sf.photometric_loss(target, warped), warped)
    torch.testing.assert_close(g3, 3.0 * g1)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_compiles_with_its_gradient(backend):
    target, warped, ident = _frames(2, 1, 6, 6, torch.float32, True)
    warped.requires_grad_()
    with sf.backend(backend):
        _compiled_gradient_matches(target, warped, ident)


def _compiled_gradient_matches(target, warped, ident):
    compiled = torch.compile(lambda t, w, i: sf.photometric_loss(t, w, i), fullgraph=True, backend="eager")
    loss = compiled(target, warped, ident)
    (grad,) = torch.autograd.grad(loss, warped)
    (expected,) = torch.autograd.grad(sf.photometric_loss(target, warped, ident), warped)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("where", ["warped", "identity", "target"])
def test_a_nan_pixel_has_a_nan_loss_and_gradient_as_the_reference(backend, where):
    target, warped, identity = _frames(2, 1, 6, 5, torch.float32, True)
    {"warped": warped[1, 0], "identity": identity[0, 0], "target": target[0]}[where][2, 0, 4] = float("nan")
    warped.requires_grad_()
    with sf.backend(backend):
        loss = sf.photometric_loss(target, warped, identity)
        (grad,) = torch.autograd.grad(loss, warped)
    w64 = warped.detach().double().requires_grad_()
    ref = reference_loss(target.double(), w64, identity.double())
    (ref_grad,) = torch.autograd.grad(ref, w64)
    assert loss.isnan() and ref.isnan()
    assert torch.equal(grad.isnan(), ref_grad.isnan())
    torch.testing.assert_close(grad.double().nan_to_num(), ref_grad.nan_to_num(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((torch.rand(1, 3, 1, 5), torch.rand(1, 1, 3, 1, 5)), ValueError, "target: expected images of at least 2 x 2"),
        ((torch.rand(1, 4, 5, 5), torch.rand(1, 1, 4, 5, 5)), ValueError, "target: expected a 4-D tensor"),
        ((torch.rand(1, 3, 5, 5), torch.rand(1, 2, 3, 5, 5)), ValueError, "warped: expected"),
        (
            (torch.rand(1, 3, 5, 5), torch.rand(1, 1, 3, 5, 5), torch.rand(2, 1, 3, 5, 5)),
            ValueError,
            "identity: expected",
        ),
        ((torch.rand(1, 3, 5, 5), torch.rand(1, 1, 3, 5, 5), None, 1.5), ValueError, "ssim_weight"),
        ((torch.rand(1, 3, 5, 5).long(), torch.rand(1, 1, 3, 5, 5)), TypeError, "target: expected a floating dtype"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, error, match):
    with pytest.raises(error, match=match):
        sf.photometric_loss(*args)


ISAS = torch.ops.semiseg_fast._cpp_kernel_isas()  # the builds this CPU runs; "generic" always


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_every_instruction_set_and_thread_count_agrees_with_the_generic_build(name, threads):
    target, warped, identity = _frames(2, 3, 7, 10, torch.float32, True, seed=5)
    warped.requires_grad_()
    isa, before, threads_before = torch.ops.semiseg_fast._cpp_kernel_isa, None, torch.get_num_threads()

    def run(build, n):
        isa(build)
        torch.set_num_threads(n)
        loss, winner = sf.photometric_loss(target, warped, identity, return_winner=True)
        return loss, winner, torch.autograd.grad(loss, warped)[0]

    try:
        before = isa("")
        fast, base = run(name, threads), run("generic", 1)
    finally:
        isa(before)
        torch.set_num_threads(threads_before)
    torch.testing.assert_close(fast[0], base[0], rtol=1e-6, atol=0)
    assert torch.equal(fast[1], base[1])
    torch.testing.assert_close(fast[2], base[2], rtol=1e-5, atol=1e-9)
