"""Properties of the C++ CPU kernels beyond op-level correctness."""

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


def all_ops(x, t, teacher):
    with sf.backend("cpp"):
        xs = x.detach().requires_grad_()
        ps = sf.pixel_stats(x)
        ce = sf.pseudo_label_cross_entropy(xs, t)
        g = torch.autograd.grad(ce, xs)[0]
        fm = sf.fixmatch_loss(xs, teacher, 0.8)
        gf = torch.autograd.grad(fm, xs)[0]
    return ps.confidence, ps.label, ps.entropy, ce, g, fm, gf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "view"])
def test_generic_and_avx2_kernels_agree(isa, dtype, layout):
    if isa("") != "avx2":
        pytest.skip("CPU without AVX2: only the generic kernels exist")
    x = make_logits(2, 21, 9, 11, dtype=dtype, layout=layout)
    t = torch.randint(0, 21, (2, 9, 11), dtype=torch.uint8)
    teacher = make_logits(2, 21, 9, 11, dtype=dtype, scale=6.0)
    fast = all_ops(x, t, teacher)
    isa("generic")
    base = all_ops(x, t, teacher)
    for a, b in zip(fast, base):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(a, b)


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


def test_reported_isa_is_known():
    assert ops._cpp_kernel_isa("") in ("avx2", "generic")
    with pytest.raises(RuntimeError, match="kernel_isa: expected 'avx2', 'generic'"):
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
