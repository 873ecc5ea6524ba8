"""A dilated convolution's forward + backward (input and weight gradients), fp32 channels_last on
CPU: PyTorch's convolution against the tap-by-tap weight gradient (semiseg_fast.models.tap_grad),
at the shapes where the training loop's model takes it (layer3 and ASPP on the fast schedule's
32-pixel crops and on 56-pixel ones) and at a DeepLab-sized ASPP rate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semiseg_fast.models.tap_grad import MIN_PADDED_FRACTION, conv2d_tap_grad, padded_fraction

from . import cases

# (name, batch, in channels, out channels, map side, dilation)
SHAPES = [
    ("layer3 on 32-px crops", 16, 128, 128, 4, 2),
    ("ASPP rate 2 on 32-px crops", 16, 128, 64, 4, 2),
    ("ASPP rate 4 on 56-px crops", 8, 128, 64, 7, 4),
    ("ASPP rate 6 on 56-px crops", 8, 128, 64, 7, 6),
]
if not cases.QUICK:
    SHAPES.append(("ASPP rate 18 on 33x33 maps", 2, 256, 256, 33, 18))


@pytest.mark.skipif(cases.device().type != "cpu", reason="the tap-by-tap gradient is CPU only")
@pytest.mark.parametrize("impl", ["pytorch", "tap"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0].replace(" ", "_") for s in SHAPES])
def test_dilated_conv_fwd_bwd(benchmark, shape, impl):
    name, n, cin, cout, side, d = shape
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last
    x = torch.randn(n, cin, side, side, generator=g).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(cout, cin, 3, 3, generator=g).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(n, cout, side, side, generator=g).contiguous(memory_format=fmt)
    if impl == "tap":
        assert padded_fraction(side, side, (3, 3), (d, d), (d, d)) >= MIN_PADDED_FRACTION
        conv = lambda: conv2d_tap_grad(x, w, None, (d, d), (d, d))
    else:
        conv = lambda: F.conv2d(x, w, None, 1, d, d)
    benchmark.group = f"dilated conv fwd+bwd: {name}"
    benchmark.extra_info.update(
        case="tap_grad", shape=[n, cin, cout, side, d], impl=impl, threads=torch.get_num_threads()
    )
    benchmark.pedantic(lambda: torch.autograd.grad(conv(), (x, w), grad), rounds=20, iterations=1, warmup_rounds=3)
