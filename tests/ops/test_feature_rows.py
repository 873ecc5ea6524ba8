"""feature_rows and pixel_rows (U2PL's per-pixel feature reads) against plain PyTorch indexing."""

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.ops.feature_rows import feature_rows, pixel_rows


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_rows_and_their_gradient_equal_indexing(backend, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 6, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    pixels = torch.randint(0, 3 * 7 * 6, (4, 9), generator=g)
    pixels[0, :3] = 11  # one pixel drawn three times: its gradients add up
    expected_rows = x.permute(0, 2, 3, 1).reshape(-1, 5)
    upstream = torch.randn(4, 9, 5, generator=g)
    for _ in range(2):  # the second call reuses a recycled buffer: nothing of the first may remain
        xs = x.detach().requires_grad_()
        with sf.backend(backend):
            assert torch.equal(feature_rows(x), expected_rows)
            rows = pixel_rows(xs, pixels)
        assert torch.equal(rows, expected_rows[pixels])
        (grad,) = torch.autograd.grad(rows, xs, upstream)
        xr = x.detach().requires_grad_()
        (want,) = torch.autograd.grad(xr.permute(0, 2, 3, 1).reshape(-1, 5)[pixels], xr, upstream)
        torch.testing.assert_close(grad, want)
        upstream = upstream.flip(0)


def test_out_of_range_pixels_are_refused():
    x = torch.randn(1, 2, 3, 3)
    with sf.backend("cpp"), pytest.raises(IndexError, match="pixels"):
        pixel_rows(x, torch.tensor([9]))
