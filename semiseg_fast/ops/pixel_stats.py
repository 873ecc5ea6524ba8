"""pixel_stats: confidence, label and entropy of softmax(logits / T) from one read of the logits."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base import label_dtype
from ._grad import first_order_only, refuse_function_transforms


class PixelStats(NamedTuple):
    confidence: torch.Tensor  # (N, H, W) fp32, max_c softmax(x / T)_c
    label: torch.Tensor  # (N, H, W) argmax_c x_c (first on ties), uint8 if C <= 255 else int64
    entropy: torch.Tensor  # (N, H, W) fp32, in nats


@torch.library.custom_op("semiseg_fast::pixel_stats", mutates_args=())
def _pixel_stats_op(
    logits: torch.Tensor, temperature: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_pixel_stats(logits, temperature))
    from ..triton.pixel_stats import pixel_stats as triton_pixel_stats

    return triton_pixel_stats(logits, temperature)


@_pixel_stats_op.register_fake
def _(logits, temperature, backend):
    n, c, h, w = logits.shape
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
    backend: str,
) -> torch.Tensor:
    """d/d logits of sum(grad_conf * confidence + grad_ent * entropy), in one pass over the logits."""
    if backend == "cpp":
        return torch.ops.semiseg_fast._cpp_pixel_stats_backward(
            logits, confidence, label, entropy, grad_conf, grad_ent, temperature
        )
    from ..triton.pixel_stats import pixel_stats_backward as triton_backward

    return triton_backward(logits, confidence, label, entropy, grad_conf, grad_ent, temperature)


@_pixel_stats_backward_op.register_fake
def _(logits, confidence, label, entropy, grad_conf, grad_ent, temperature, backend):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, temperature, backend = inputs
    confidence, label, entropy = output
    ctx.mark_non_differentiable(label)
    ctx.set_materialize_grads(False)
    ctx.temperature, ctx.backend = temperature, backend
    ctx.save_for_backward(logits, confidence, label, entropy)


def _backward(ctx, g_conf, g_label, g_ent):
    if g_conf is None and g_ent is None:
        return None, None, None
    logits, confidence, label, entropy = ctx.saved_tensors
    grad = _pixel_stats_backward_op(logits, confidence, label, entropy, g_conf, g_ent, ctx.temperature, ctx.backend)
    return first_order_only(grad), None, None


_pixel_stats_op.register_autograd(_backward, setup_context=_setup_context)


def pixel_stats(logits: torch.Tensor, temperature: float = 1.0) -> PixelStats:
    """Per-pixel teacher statistics of ``softmax(logits / temperature)`` over dim 1, in one pass.

    Args:
        logits: (N, C, H, W), float16/bfloat16/float32/float64, NCHW or channels_last or any
            strided view. Computed in fp32.
        temperature: > 0.

    Returns:
        ``PixelStats(confidence, label, entropy)``, each (N, H, W): the max probability (fp32),
        the argmax (uint8 when C <= 255, else int64; the first class among equal maxima) and the
        entropy in nats (fp32). NaN logits give NaN confidence and entropy. Confidence and
        entropy are differentiable.
    """
    logits = _checks.logits(logits)
    temperature = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    impl = resolve(logits.device)
    refuse_function_transforms(logits, impl)
    if impl == "reference":
        return PixelStats(*reference.pixel_stats(logits, temperature))
    return PixelStats(*_pixel_stats_op(logits, temperature, impl))
