"""pixel_stats: confidence, label and entropy of softmax(logits / T) from one read of the logits."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base import label_dtype
from ..base.resample import interpolate
from ._grad import first_order_only, refuse_function_transforms


class PixelStats(NamedTuple):
    confidence: torch.Tensor  # (N, H, W) fp32, max_c softmax(x / T)_c
    label: torch.Tensor  # (N, H, W) argmax_c x_c (first on ties), uint8 if C <= 255 else int64
    entropy: torch.Tensor  # (N, H, W) fp32, in nats


@torch.library.custom_op("semiseg_fast::pixel_stats", mutates_args=())
def _pixel_stats_op(
    logits: torch.Tensor, temperature: float, size: list[int] | None, align_corners: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_pixel_stats(logits, temperature, size, align_corners))
    from ..triton.pixel_stats import pixel_stats as triton_pixel_stats

    return triton_pixel_stats(logits, temperature, size and tuple(size), align_corners)


@_pixel_stats_op.register_fake
def _(logits, temperature, size, align_corners, backend):
    n, c, h, w = logits.shape
    if size is not None:
        h, w = size
    return (
        logits.new_empty((n, h, w), dtype=torch.float32),
        logits.new_empty((n, h, w), dtype=label_dtype(c)),
        logits.new_empty((n, h, w), dtype=torch.float32),
    )


@torch.library.custom_op("semiseg_fast::pixel_stats_backward", mutates_args=())
def _pixel_stats_backward_op(
    logits: torch.Tensor,
    confidence: torch.Tensor,
    label: torch.Tensor,
    entropy: torch.Tensor,
    grad_conf: torch.Tensor | None,
    grad_ent: torch.Tensor | None,
    temperature: float,
    size: list[int] | None,
    align_corners: bool,
    backend: str,
) -> torch.Tensor:
    """d/d logits of sum(grad_conf * confidence + grad_ent * entropy), in one pass over the logits."""
    if backend == "cpp":
        return torch.ops.semiseg_fast._cpp_pixel_stats_backward(
            logits, confidence, label, entropy, grad_conf, grad_ent, temperature, size, align_corners
        )
    from ..triton.pixel_stats import pixel_stats_backward as triton_backward

    return triton_backward(
        logits, confidence, label, entropy, grad_conf, grad_ent, temperature, size and tuple(size), align_corners
    )


@_pixel_stats_backward_op.register_fake
def _(logits, confidence, label, entropy, grad_conf, grad_ent, temperature, size, align_corners, backend):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, temperature, size, align_corners, backend = inputs
    confidence, label, entropy = output
    ctx.mark_non_differentiable(label)
    ctx.set_materialize_grads(False)
    ctx.temperature, ctx.size, ctx.align_corners, ctx.backend = temperature, size, align_corners, backend
    ctx.save_for_backward(logits, confidence, label, entropy)


def _backward(ctx, g_conf, g_label, g_ent):
    if g_conf is None and g_ent is None:
        return None, None, None, None, None
    logits, confidence, label, entropy = ctx.saved_tensors
    grad = _pixel_stats_backward_op(
        logits, confidence, label, entropy, g_conf, g_ent, ctx.temperature, ctx.size, ctx.align_corners, ctx.backend
    )
    return first_order_only(grad), None, None, None, None


_pixel_stats_op.register_autograd(_backward, setup_context=_setup_context)


def pixel_stats(
    logits: torch.Tensor,
    temperature: float = 1.0,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> PixelStats:
    """Per-pixel teacher statistics of ``softmax(logits / temperature)`` over dim 1, in one pass.

    Args:
        logits: (N, C, H, W), float16/bfloat16/float32/float64, NCHW or channels_last or any
            strided view. Computed in fp32.
        temperature: > 0.
        size, align_corners: the statistics of ``F.interpolate(logits, size, mode="bilinear",
            align_corners=align_corners)``, computed from ``logits`` without the upsampled tensor:
            the outputs are (N, *size), the gradient comes back at the logits' own size.

    Returns:
        ``PixelStats(confidence, label, entropy)``, each (N, H, W): the max probability (fp32),
        the argmax (uint8 when C <= 255, else int64; the first class among equal maxima) and the
        entropy in nats (fp32). NaN logits give NaN confidence and entropy. Confidence and
        entropy are differentiable.
    """
    logits = _checks.logits(logits)
    temperature = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    size, align_corners = _checks.output_size(size, logits, align_corners)
    impl = resolve(logits.device)
    refuse_function_transforms(logits, impl)
    if impl == "reference":
        return PixelStats(*reference.pixel_stats(interpolate(logits, size, align_corners), temperature))
    return PixelStats(*_pixel_stats_op(logits, temperature, size and list(size), align_corners, impl))
