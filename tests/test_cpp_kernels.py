"""Properties of the C++ CPU kernels beyond op-level correctness."""

import os
import subprocess
import sys

import pytest
import torch

import semiseg_fast as sf
from tests.helpers import ce64, make_logits

ops = torch.ops.semiseg_fast


@pytest.fixture
def isa():
    before = ops._cpp_kernel_isa("")
    yield ops._cpp_kernel_isa
    ops._cpp_kernel_isa(before)


def all_ops(x, t, teacher, size=None):
    kw = dict(size=size, align_corners=True)
    with sf.backend("cpp"):
        xs = x.detach().requires_grad_()
        ps = sf.pixel_stats(x, **kw)
        ce = sf.pseudo_label_cross_entropy(xs, t, **kw)
        g = torch.autograd.grad(ce, xs)[0]
        fm = sf.fixmatch_loss(xs, teacher, 0.8, **kw)
        gf = torch.autograd.grad(fm, xs)[0]
    return ps.confidence, ps.label, ps.entropy, ce, g, fm, gf


ISAS = ops._cpp_kernel_isas()  # the builds this CPU runs, widest first; "generic" always
WIDE = [name for name in ISAS if name != "generic"]


@pytest.mark.parametrize("name", WIDE or [pytest.param("none", marks=pytest.mark.skip("only the generic build runs"))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "view"])
@pytest.mark.parametrize("c", [3, 21])
@pytest.mark.parametrize("size", [None, (37, 40), (5, 6)], ids=["plain", "upsampled", "downsampled"])
def test_every_instruction_set_agrees_with_the_generic_build(isa, name, dtype, layout, c, size):
    x = make_logits(2, c, 9, 11, dtype=dtype, layout=layout)
    x[0, 1, 2, 3] = float("nan")  # a NaN row: NaN statistics, never confident, in every build
    t = torch.randint(0, c, (2, *(size or (9, 11))), dtype=torch.uint8)
    teacher = make_logits(2, c, 9, 11, dtype=dtype, scale=6.0)
    assert isa(name) == name
    fast = all_ops(x, t, teacher, size)
    isa("generic")
    base = all_ops(x, t, teacher, size)
    for a, b in zip(fast, base):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ISAS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_instruction_set_rounds_to_half_precision_like_torch(isa, name, dtype):
    """fp32 -> fp16/bf16 (the gradient's last step) equals torch's rounding bit for bit in every build:
    ties to even, subnormals (which AVX512-BF16's instruction would flush), inf, NaN."""
    g = torch.Generator().manual_seed(0)
    v = torch.cat(
        [
            torch.randn(4000, generator=g) * torch.logspace(-44, 38, 4000).float(),
            torch.tensor([0.0, -0.0, 1e-40, -1e-40, 1.17e-38, 6e-8, 3e-8, 65504.0, 65520.0, 1e6]),
            torch.tensor([float("inf"), -float("inf"), float("nan"), -float("nan")]),
            (torch.arange(0, 4096, dtype=torch.int32) * 0x8000 + 0x3F800000).view(torch.float32),  # halfway cases
        ]
    )
    v = v[: v.numel() // 64 * 64].reshape(1, -1, 4, 4).contiguous()
    isa(name)
    out = ops._cpp_scaled_grad(v, torch.tensor(1.0), dtype)
    want = v.to(dtype)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out.view(torch.int16)[~nan], want.view(torch.int16)[~nan])  # bits: -0.0 and subnormals too


def test_results_do_not_depend_on_thread_count():
    x = make_logits(3, 19, 40, 41)
    t = torch.randint(0, 19, (3, 40, 41), dtype=torch.uint8)
    teacher = make_logits(3, 19, 40, 41, scale=6.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = all_ops(x, t, teacher)
        torch.set_num_threads(max(2, threads))
        many = all_ops(x, t, teacher)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 5, 1, 37), (2, 5, 37, 1), (1, 2, 3, 700), (1, 4, 0, 5)])
def test_degenerate_spatial_shapes(shape):
    n, c, h, w = shape
    x = make_logits(n, c, h, w, requires_grad=True)
    t = torch.randint(0, c, (n, h, w), dtype=torch.uint8)
    with sf.backend("cpp"):
        loss = sf.pseudo_label_cross_entropy(x, t)
        g = torch.autograd.grad(loss, x)[0]
    ref, ref_g = ce64(x, t)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(g.double(), ref_g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "shape,size", [((1, 3, 1, 1), (4, 5)), ((2, 5, 1, 37), (3, 70)), ((1, 2, 3, 700), (1, 1)), ((0, 4, 3, 5), (6, 7))]
)
def test_degenerate_resampled_shapes(shape, size):
    n, c, h, w = shape
    x = make_logits(n, c, h, w, requires_grad=True)
    t = torch.randint(0, c, (n, *size), dtype=torch.uint8)
    with sf.backend("cpp"):
        loss = sf.pseudo_label_cross_entropy(x, t, size=size)
        g = torch.autograd.grad(loss, x)[0]
    xd = x.detach().double().requires_grad_()
    up = torch.nn.functional.interpolate(xd, size=size, mode="bilinear", align_corners=False)
    ref = torch.nn.functional.cross_entropy(up, t.long()) if n else up.sum() * 0
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(g.double(), torch.autograd.grad(ref, xd)[0], rtol=1e-4, atol=1e-7)


def test_logits_without_pixels_cannot_be_resampled():
    with pytest.raises(ValueError, match="size: logits with no pixels"):
        sf.pixel_stats(torch.zeros(1, 3, 0, 4), size=(2, 2))


def test_the_widest_build_is_chosen_and_unknown_names_are_refused():
    assert ISAS[-1] == "generic" and set(ISAS) <= {"avx512_bf16", "avx512", "avx2", "generic"}
    code = "import torch, semiseg_fast; print(torch.ops.semiseg_fast._cpp_kernel_isa(''))"
    env = {k: v for k, v in os.environ.items() if k != "SEMISEG_FAST_CPU_ISA"}
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == ISAS[0]
    env["SEMISEG_FAST_CPU_ISA"] = "avx2" if "avx2" in ISAS else "generic"
    named = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert named.stdout.strip() == env["SEMISEG_FAST_CPU_ISA"]
    with pytest.raises(RuntimeError, match="kernel_isa: expected one of 'avx512_bf16', 'avx512', 'avx2', 'generic'"):
        ops._cpp_kernel_isa("sse9")


def test_large_outputs_are_recycled():
    sf.empty_cpu_cache()
    limit = sf.cpu_cache_info()["limit_bytes"]
    try:
        sf.set_cpu_cache_limit(64 << 20)
        x = make_logits(1, 21, 128, 128, requires_grad=True)  # 1.4 MB of fp32 logits
        t = torch.randint(0, 21, (1, 128, 128), dtype=torch.uint8)
        with sf.backend("cpp"):
            g1 = torch.autograd.grad(sf.pseudo_label_cross_entropy(x, t), x)[0]
            ptr = g1.data_ptr()
            ref = g1.clone()
            del g1
            assert sf.cpu_cache_info()["cached_bytes"] >= x.numel() * 4
            g2 = torch.autograd.grad(sf.pseudo_label_cross_entropy(x, t), x)[0]
        assert g2.data_ptr() == ptr  # the same block, handed out again
        assert torch.equal(g2, ref)
        del g2
        sf.empty_cpu_cache()
        assert sf.cpu_cache_info()["cached_bytes"] == 0
        sf.set_cpu_cache_limit(0)
        with sf.backend("cpp"):
            g3 = torch.autograd.grad(sf.pseudo_label_cross_entropy(x, t), x)[0]
        del g3
        assert sf.cpu_cache_info()["cached_bytes"] == 0
    finally:
        sf.set_cpu_cache_limit(limit)
    with pytest.raises(ValueError, match="limit_bytes: expected an int >= 0"):
        sf.set_cpu_cache_limit(-1)


def test_nearby_sizes_share_cached_blocks():
    """Blocks are kept by size class (four per power of two), so a slightly smaller gradient reuses
    the block of a larger one, and shapes that change every call keep one block per class."""
    sf.empty_cpu_cache()
    t_of = lambda n, h, w: torch.randint(0, 21, (n, h, w), dtype=torch.uint8)
    with sf.backend("cpp"):
        x = make_logits(1, 21, 128, 128, requires_grad=True)  # 1.38 MB: the 1.5 MiB class
        g = torch.autograd.grad(sf.pseudo_label_cross_entropy(x, t_of(1, 128, 128)), x)[0]
        ptr = g.data_ptr()
        del g
        y = make_logits(1, 21, 124, 127, requires_grad=True)  # 1.32 MB: the same class
        g = torch.autograd.grad(sf.pseudo_label_cross_entropy(y, t_of(1, 124, 127)), y)[0]
        assert g.data_ptr() == ptr
        del g
        gen = torch.Generator().manual_seed(0)
        for _ in range(60):
            n, h, w = (int(v) for v in torch.randint(32, 129, (3,), generator=gen))
            n = 1 + n % 2
            x = make_logits(n, 21, h, w, requires_grad=True)
            torch.autograd.grad(sf.fixmatch_loss(x, x.detach() * 4, 0.5), x)
    # Pooled gradients here lie between 1 MiB and 2.6 MiB: classes 1, 1.25, 1.5, 1.75, 2, 2.5 and 3 MiB,
    # one block each (by exact size, the 60 calls would keep about 100 MB).
    assert sf.cpu_cache_info()["cached_bytes"] <= 13 << 20
    sf.empty_cpu_cache()


def test_recycled_gradient_keeps_channels_last_layout():
    x = make_logits(1, 21, 128, 96, layout="channels_last", requires_grad=True)
    t = torch.randint(0, 21, (1, 128, 96), dtype=torch.uint8)
    with sf.backend("cpp"):
        g = torch.autograd.grad(sf.pseudo_label_cross_entropy(x, t), x)[0]
    assert g.is_contiguous(memory_format=torch.channels_last)
