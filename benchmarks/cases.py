"""What the benchmarks run: inputs at real shapes, and for each op the fused version, the eager
reference and torch.compile of the reference, forward-only or forward+backward.

"fwd" runs with inputs that do not require grad (the fused ops then skip gradient work);
"fwd+bwd" also computes d loss / d logits with torch.autograd.grad (nothing accumulates).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

import semiseg_fast as sf
from semiseg_fast import reference

QUICK = os.environ.get("SEMISEG_BENCH_QUICK", "0") not in ("", "0")

# (name, N, C, H, W)
SHAPES = [("voc", 4, 21, 513, 513), ("cityscapes", 2, 19, 769, 769)]
if QUICK:
    SHAPES = [("tiny", 2, 21, 33, 35)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
if QUICK:
    DTYPES = {"fp32": torch.float32}
    LAYOUTS = {"nchw": torch.contiguous_format}
IMPLS = ["fused", "eager", "compile"]
MODES = ["fwd", "fwd+bwd"]
OPS = ["pixel_stats", "pseudo_label_cross_entropy", "fixmatch_loss", "ohem_cross_entropy"]
THRESHOLD = 0.95
OHEM = dict(threshold=0.7, min_kept=100000)  # U2PL's Cityscapes recipe


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Inputs:
    student: torch.Tensor
    teacher: torch.Tensor
    target: torch.Tensor  # uint8, 10% ignored (255)
    ignore_mask: torch.Tensor  # uint8, 255 = ignored (UniMatch's padding convention)


def make_inputs(shape, dtype, layout, seed=0) -> Inputs:
    _, n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    dev = device()
    student = torch.randn(n, c, h, w, generator=g)
    # Teacher: ~70% of pixels with one dominant class, most of them above the threshold.
    teacher = torch.randn(n, c, h, w, generator=g)
    boost = (torch.rand(n, 1, h, w, generator=g) < 0.7) * 7.0
    cls = torch.randint(0, c, (n, 1, h, w), generator=g)
    teacher.scatter_add_(1, cls, boost.expand(n, 1, h, w).float())
    target = torch.randint(0, c, (n, h, w), generator=g, dtype=torch.uint8)
    target[torch.rand(n, h, w, generator=g) < 0.1] = 255
    ignore = torch.zeros(n, h, w, dtype=torch.uint8)
    ignore[:, -h // 16 :] = 255
    cast = lambda x: x.to(device=dev, dtype=dtype).contiguous(memory_format=layout)
    return Inputs(cast(student), cast(teacher), target.to(dev), ignore.to(dev))


def _reference_call(op: str):
    if op == "pixel_stats":
        return lambda x, inp: reference.pixel_stats(x)
    if op == "pseudo_label_cross_entropy":
        return lambda x, inp: reference.pseudo_label_cross_entropy(x, inp.target)
    if op == "ohem_cross_entropy":
        return lambda x, inp: reference.ohem_cross_entropy(x, inp.target, **OHEM)
    return lambda x, inp: reference.fixmatch_loss(x, inp.teacher, THRESHOLD, inp.ignore_mask)


def _fused_call(op: str):
    if op == "pixel_stats":
        return lambda x, inp: tuple(sf.pixel_stats(x))
    if op == "pseudo_label_cross_entropy":
        return lambda x, inp: sf.pseudo_label_cross_entropy(x, inp.target)
    if op == "ohem_cross_entropy":
        return lambda x, inp: sf.ohem_cross_entropy(x, inp.target, **OHEM)
    return lambda x, inp: sf.fixmatch_loss(x, inp.teacher, THRESHOLD, inp.ignore_mask)


def _input_of(op: str, inp: Inputs) -> torch.Tensor:
    """The logits the op differentiates: the teacher's for pixel_stats, the student's otherwise."""
    return inp.teacher if op == "pixel_stats" else inp.student


def make_runner(op: str, impl: str, mode: str, inp: Inputs) -> Callable[[], object]:
    call = _fused_call(op) if impl.startswith("fused") else _reference_call(op)
    if impl == "compile":
        call = torch.compile(call, fullgraph=True, dynamic=False)
    x = _input_of(op, inp).detach().requires_grad_(mode == "fwd+bwd")

    if mode == "fwd":

        def run():
            with torch.no_grad():
                return call(x, inp)

        return run

    def run():
        out = call(x, inp)
        if op == "pixel_stats":
            conf, _, ent = out
            return torch.autograd.grad((conf, ent), x, (torch.ones_like(conf), torch.ones_like(ent)))
        return torch.autograd.grad(out, x)

    return run


def minimal_bytes(op: str, mode: str, inp: Inputs) -> int:
    """Bytes the op cannot avoid moving: each input read once, each output written once."""
    x = _input_of(op, inp)
    logits = x.numel() * x.element_size()
    pixels = inp.target.numel()
    grad = logits if mode == "fwd+bwd" else 0
    if op == "pixel_stats":
        fwd = logits + pixels * (4 + 1 + 4)
        # backward: the logits again, two fp32 incoming gradients, the gradient out
        return fwd + (logits + 8 * pixels + logits if mode == "fwd+bwd" else 0)
    if op in ("pseudo_label_cross_entropy", "ohem_cross_entropy"):
        return logits + pixels * 1 + grad
    return 2 * logits + pixels * 1 + grad


def contrastive_inputs(feat, d):
    """U2PL's contrastive step at feature resolution ``feat`` = (B, C, h, w) with ``d``-dim features:
    (rep, rep_teacher, prob_teacher, label, reliable, unreliable, is_labeled)."""
    b, c, h, w = feat
    g = torch.Generator().manual_seed(1)
    rep = torch.randn(b, d, h, w, generator=g)
    rep_t = torch.randn(b, d, h, w, generator=g)
    prob = torch.softmax(torch.randn(b, c, h, w, generator=g) * 3, 1)
    label = prob.argmax(1)
    reliable = torch.rand(b, h, w, generator=g) < 0.6
    unreliable = torch.rand(b, h, w, generator=g) < 0.3
    is_labeled = torch.arange(b) < b // 2
    return rep, rep_t, prob, label, reliable, unreliable, is_labeled
