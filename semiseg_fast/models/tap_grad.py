"""A stride-1 dilated convolution whose weight gradient is computed tap by tap, on CPU.

Where the dilation is large against the map, most of what a kernel tap reads is zero padding
(a 3x3 kernel at dilation 2 on a 4x4 map: 56%), and oneDNN's backward-weight pass multiplies the
padding all the same. Here each tap's gradient is one matrix product over the output positions
where that tap reads the image, so padding costs nothing. The forward pass and the input gradient
are PyTorch's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Taken from this fraction of padded reads up. One thread, weight gradient alone: 56% padded (4x4
# map, rate 2) 3.4x faster than oneDNN's; 34% and 31% (7x7 and 8x8, rate 2) as fast or slower.
MIN_PADDED_FRACTION = 0.5


def _valid_positions(size: int, kernel: int, dilation: int, padding: int):
    """For each tap along one side, the range of output positions where it reads the image."""
    for k in range(kernel):
        offset = k * dilation - padding
        yield offset, max(0, -offset), min(size, size - offset)


def padded_fraction(
    height: int, width: int, kernel: tuple[int, int], dilation: tuple[int, int], padding: tuple[int, int]
) -> float:
    """The fraction of a stride-1 "same" convolution's (tap, output position) pairs that read padding."""

    def reads(*side):  # (tap, position) pairs along one side that read the image
        return sum(max(0, stop - start) for _, start, stop in _valid_positions(*side))

    valid = reads(height, kernel[0], dilation[0], padding[0]) * reads(width, kernel[1], dilation[1], padding[1])
    return 1.0 - valid / (kernel[0] * kernel[1] * height * width)


def _weight_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, padding, dilation) -> torch.Tensor:
    height, width = x.shape[-2], x.shape[-1]
    x_hwc, grad_hwc = x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)  # views; free for channels_last
    cout, cin = weight.shape[0], weight.shape[1]
    taps = x.new_zeros(weight.shape[2], weight.shape[3], cout, cin)  # a tap reading only padding stays 0
    for ky, (dy, y0, y1) in enumerate(_valid_positions(height, weight.shape[2], dilation[0], padding[0])):
        for kx, (dx, x0, x1) in enumerate(_valid_positions(width, weight.shape[3], dilation[1], padding[1])):
            if y0 < y1 and x0 < x1:
                g = grad_hwc[:, y0:y1, x0:x1].reshape(-1, cout)
                seen = x_hwc[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1, cin)
                torch.mm(g.t(), seen, out=taps[ky, kx])
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return taps.permute(2, 0, 1, 3).contiguous().permute(0, 3, 1, 2)
    return taps.permute(2, 3, 0, 1).contiguous()


class _TapGradConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                [1, 1],
                list(ctx.padding),
                list(ctx.dilation),
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad, weight, ctx.padding, ctx.dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def conv2d_tap_grad(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation)`` for an ungrouped "same" convolution (odd
    kernel, ``padding = dilation * (kernel // 2)``), with the weight gradient computed tap by tap
    where that is faster: on CPU, in float32 or float64 outside autocast, when at least
    ``MIN_PADDED_FRACTION`` of the taps' reads are padding. Anything else runs ``F.conv2d`` itself.
    The tap-by-tap path is differentiable once: a double backward through it raises."""
    fast = (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
        and weight.shape[1] == x.shape[1]
        and all(k % 2 and p == d * (k // 2) for k, p, d in zip(weight.shape[-2:], padding, dilation))
        and padded_fraction(x.shape[-2], x.shape[-1], weight.shape[-2:], dilation, padding) >= MIN_PADDED_FRACTION
    )
    if not fast:
        return F.conv2d(x, weight, bias, 1, padding, dilation)
    return _TapGradConv2d.apply(x, weight, bias, tuple(padding), tuple(dilation))
