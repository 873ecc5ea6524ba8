"""fp64 ground truth and input builders shared by the op tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Fused backends under test (the reference backend is plain PyTorch).
FUSED = ["cpp", "triton"]
ALL = ["reference", "cpp", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last", "view"]


def make_logits(n, c, h, w, dtype=torch.float32, layout="nchw", scale=3.0, requires_grad=False, values=None):
    """Logits in a memory layout: NCHW, channels_last, or a strided crop of a bigger tensor.

    With requires_grad the result is part of a graph (a leaf, or a view of one), so
    torch.autograd.grad(loss, x) gives d loss / d x in every layout.
    """
    v = values if values is not None else torch.randn(n, c, h, w) * scale
    if layout == "view":
        big = torch.zeros(n, c + 1, h + 2, w + 3, dtype=dtype)
        big[:, 1:, 1:-1, 2:-1] = v.to(dtype)
        big.requires_grad_(requires_grad)
        x = big[:, 1:, 1:-1, 2:-1]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    else:
        x = v.to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(requires_grad)
    assert x.shape == (n, c, h, w)
    return x


def stats64(x, temperature=1.0):
    """fp64 (confidence, label, entropy); differentiable when x is an fp64 tensor requiring grad."""
    xd = (x if x.dtype == torch.float64 else x.detach().double()) / temperature
    logp = F.log_softmax(xd, dim=1)
    p = logp.exp()
    conf = p.max(dim=1).values
    label = x.detach().double().argmax(dim=1)
    ent = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(dim=1)
    return conf, label, ent


def ce64(x, target, weight=None, ignore_index=255, reduction="mean", normalizer="valid"):
    """Loss and d loss / d x in fp64 for the pseudo_label_cross_entropy semantics."""
    xd = x.detach().double().requires_grad_()
    t = target.long()
    valid = t != ignore_index
    ce = F.cross_entropy(xd, torch.where(valid, t, torch.zeros_like(t)), reduction="none")
    w = weight.double() if weight is not None else torch.ones_like(ce)
    lp = torch.where(valid, w * ce, torch.zeros_like(ce))
    if reduction == "none":
        loss = lp
        lp.sum().backward()
        return loss, xd.grad
    total = lp.sum()
    if reduction == "sum":
        loss = total
    else:
        if normalizer == "valid":
            d = valid.sum().double()
        elif normalizer == "weighted":
            d = (w * valid).sum()
        elif normalizer == "total":
            d = torch.tensor(float(t.numel()), dtype=torch.float64)
        else:
            d = torch.tensor(float(normalizer), dtype=torch.float64)
        loss = total / d if float(d) != 0 else total * 0
    loss.backward()
    return loss.detach(), xd.grad


def fixmatch64(student, teacher, threshold=0.95, ignore_mask=None, ignore_index=255, normalizer="valid"):
    conf, label, _ = stats64(teacher)
    if ignore_mask is None:
        valid = torch.ones_like(label, dtype=torch.bool)
    elif ignore_mask.dtype == torch.bool:
        valid = ~ignore_mask
    else:
        valid = ignore_mask != ignore_index
    mask = (conf >= threshold) & valid
    xd = student.detach().double().requires_grad_()
    ce = F.cross_entropy(xd, label, reduction="none")
    total = torch.where(mask, ce, torch.zeros_like(ce)).sum()
    if normalizer == "valid":
        d = float(valid.sum())
    elif normalizer == "confident":
        d = float(mask.sum())
    elif normalizer == "total":
        d = float(valid.numel())
    else:
        d = float(normalizer)
    loss = total / d if d else total * 0
    loss.backward()
    return loss.detach(), xd.grad, float(mask.sum()) / max(float(valid.sum()), 1.0), conf


def tol(dtype):
    """(rtol, atol) for a loss or statistic computed in fp32 from `dtype` inputs."""
    return {
        torch.float32: (2e-5, 2e-6),
        torch.float16: (2e-5, 2e-6),
        torch.bfloat16: (2e-5, 2e-6),
        torch.float64: (2e-5, 2e-6),
    }[dtype]


def grad_tol(dtype):
    """(rtol, atol) for a gradient stored in `dtype`."""
    return {
        torch.float32: (1e-4, 1e-7),
        torch.float64: (1e-4, 1e-7),
        torch.float16: (2e-3, 1e-6),
        torch.bfloat16: (1.6e-2, 1e-5),
    }[dtype]
