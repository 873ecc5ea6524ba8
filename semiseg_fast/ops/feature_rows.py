"""Pixel-major rows of (N, D, H, W) feature maps, as U2PL's contrastive term reads them: all pixels
(the teacher's features, for prototypes and the memory bank) or some (the student's anchors, with a
gradient). On the CPU the C++ versions write into recycled buffers, whose pages are already mapped;
elsewhere, and for dtypes other than float32, plain PyTorch indexing."""

from __future__ import annotations

import torch

from .._backend import resolve


def _fused(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and resolve(x.device) == "cpp"


def feature_rows(features: torch.Tensor) -> torch.Tensor:
    """(N * H * W, D): row p holds the features of pixel p (image-major); no gradient."""
    if _fused(features):
        return torch.ops.semiseg_fast._cpp_feature_rows(features.detach())
    return features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@torch.library.custom_op("semiseg_fast::pixel_rows", mutates_args=())
def _pixel_rows_op(features: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return torch.ops.semiseg_fast._cpp_pixel_rows(features, pixels)


@_pixel_rows_op.register_fake
def _(features, pixels):
    return features.new_empty((*pixels.shape, features.shape[1]))


def _setup_context(ctx, inputs, output):
    features, pixels = inputs
    ctx.save_for_backward(pixels)
    ctx.sizes = list(features.shape)


def _backward(ctx, grad):
    (pixels,) = ctx.saved_tensors
    # Traced (torch.compile, fake tensors): the same sum in PyTorch ops.
    if type(grad) is torch.Tensor and not torch.compiler.is_compiling():
        return torch.ops.semiseg_fast._cpp_pixel_rows_backward(grad, pixels, ctx.sizes), None
    n, d, h, w = ctx.sizes
    rows = grad.new_zeros(n * h * w, d).index_add_(0, pixels.reshape(-1), grad.reshape(-1, d))
    return rows.view(n, h, w, d).permute(0, 3, 1, 2), None


_pixel_rows_op.register_autograd(_backward, setup_context=_setup_context)


def pixel_rows(features: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(*pixels.shape, D): the features of the pixels at flat indices ``pixels`` (image-major),
    differentiable with respect to ``features``."""
    if _fused(features):
        return _pixel_rows_op(features, pixels)
    n, d, h, w = features.shape
    img, yx = pixels // (h * w), pixels % (h * w)
    return features[img, :, yx // w, yx % w]
