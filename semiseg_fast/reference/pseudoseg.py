"""PseudoSeg's calibrated fusion and consistency loss in plain PyTorch, transcribed from the official
code's unlabeled branch (``train_wss.py``, ``logit_norm=True``, ``pseudo_src='avg'``): one global
scale from the RMS of both logit tensors, the average of the two scaled softmaxes, sharpening with a
temperature, then the soft (or hard) cross-entropy of the strong view over the valid pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import _compute_dtype, _masked_denominator, _safe_div


def logit_scale(decoder_logits: torch.Tensor, sgc_logits: torch.Tensor) -> torch.Tensor:
    """s = 1 / sqrt(mean of v^2 over both tensors + 1e-8): one scalar for the whole batch."""
    v = torch.cat([decoder_logits, sgc_logits], dim=0)
    v = v.to(_compute_dtype(v))
    return torch.rsqrt(v.pow(2).mean() + 1e-8)


def fused_target(p: torch.Tensor, m: torch.Tensor, s: torch.Tensor, gamma: float, temperature: float):
    """sharpen(gamma softmax(s p) + (1 - gamma) softmax(s m), T), in the dtype of ``s``."""
    p, m = p.to(s.dtype), m.to(s.dtype)
    q = gamma * torch.softmax(s * p, dim=1) + (1 - gamma) * torch.softmax(s * m, dim=1)
    q = q.pow(1.0 / temperature)
    return q / q.sum(dim=1, keepdim=True)


def calibrated_fusion(decoder_logits, sgc_logits, gamma: float = 0.5, temperature: float = 0.5):
    """The sharpened fused target, (N, C, H, W), summing to 1 over classes."""
    return fused_target(decoder_logits, sgc_logits, logit_scale(decoder_logits, sgc_logits), gamma, temperature)


def pseudoseg_consistency_loss(
    student_logits: torch.Tensor,
    decoder_logits: torch.Tensor,
    sgc_logits: torch.Tensor,
    valid: torch.Tensor | None = None,
    threshold: float = 0.0,
    soft: bool = True,
    gamma: float = 0.5,
    temperature: float = 0.5,
    normalizer="valid",
    return_mask_ratio: bool = False,
):
    """sum(valid * [max q >= threshold] * CE(student, q)) / normalizer, q detached."""
    with torch.no_grad():
        q = calibrated_fusion(decoder_logits, sgc_logits, gamma, temperature)
        conf, label = q.max(dim=1)
        ok = torch.ones_like(label, dtype=torch.bool) if valid is None else valid != 0
        mask = ok & (conf >= threshold) if threshold > 0 else ok
    logp = F.log_softmax(student_logits.to(_compute_dtype(student_logits)), dim=1)
    ce = -(q.to(logp.dtype) * logp).sum(dim=1) if soft else F.nll_loss(logp, label, reduction="none")
    total = torch.where(mask, ce, torch.zeros_like(ce)).sum()
    loss = _safe_div(total, _masked_denominator(normalizer, ok, mask)).float()
    if not return_mask_ratio:
        return loss
    return loss, _safe_div(mask.sum().double(), ok.sum().double()).float()
