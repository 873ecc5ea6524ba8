"""pixel_stats: confidence, label and entropy of softmax(logits / T) from one read of the logits."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import _checks, reference
from .._backend import resolve


class PixelStats(NamedTuple):
    confidence: torch.Tensor  # (N, H, W) fp32, max_c softmax(x / T)_c
    label: torch.Tensor       # (N, H, W) argmax_c x_c (first on ties), uint8 if C <= 255 else int64
    entropy: torch.Tensor     # (N, H, W) fp32, in nats


@torch.library.custom_op("semiseg_fast::pixel_stats", mutates_args=())
def _pixel_stats_op(logits: torch.Tensor, temperature: float, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_pixel_stats(logits, temperature))
    from ..triton.pixel_stats import pixel_stats as triton_pixel_stats

    return triton_pixel_stats(logits, temperature)


@_pixel_stats_op.register_fake
def _(logits, temperature, backend):
    n, c, h, w = logits.shape
    return (
        logits.new_empty((n, h, w), dtype=torch.float32),
        logits.new_empty((n, h, w), dtype=reference.label_dtype(c)),
        logits.new_empty((n, h, w), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    logits, temperature, _ = inputs
    confidence, label, entropy = output
    ctx.mark_non_differentiable(label)
    ctx.temperature = temperature
    ctx.save_for_backward(logits, confidence, entropy)


def _backward(ctx, g_conf, g_label, g_ent):
    # Rarely needed (entropy minimisation, confidence penalties), so written in plain PyTorch:
    #   d conf / d x_c = conf (1[c = argmax] - p_c) / T
    #   d H / d x_c    = -p_c (log p_c + H) / T
    logits, confidence, entropy = ctx.saved_tensors
    x = logits.to(torch.promote_types(logits.dtype, torch.float32)) / ctx.temperature
    logp = F.log_softmax(x, dim=1)
    p = logp.exp()
    grad = torch.zeros_like(x)
    if g_conf is not None:
        onehot = F.one_hot(x.argmax(dim=1), x.shape[1]).permute(0, 3, 1, 2).to(x.dtype)
        grad = grad + (g_conf * confidence).unsqueeze(1).to(x.dtype) * (onehot - p)
    if g_ent is not None:
        grad = grad - g_ent.unsqueeze(1).to(x.dtype) * p * (logp + entropy.unsqueeze(1).to(x.dtype))
    return (grad / ctx.temperature).to(logits.dtype), None, None


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
    if impl == "reference":
        return PixelStats(*reference.pixel_stats(logits, temperature))
    return PixelStats(*_pixel_stats_op(logits, temperature, impl))
