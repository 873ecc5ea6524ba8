"""The losses at the decoder's resolution: logits (N, C, h, w) at stride 4, the loss of their bilinear
upsampling to (H, W) (``align_corners=True``, as U2PL and UniMatch upsample), forward + gradient.

Implementations (the upsampling, when there is one, is inside the timed function, its backward too):

- ``fused-size``: ours with ``size=(H, W)``: the upsampled logits and their gradient never exist;
- ``interp+eager`` (a): ``F.interpolate`` then the eager reference op (``semiseg_fast.reference``);
- ``interp+fused`` (b): ``F.interpolate`` then our fused op at full resolution;
- ``interp+compile`` (c): ``torch.compile`` of (a).

Each case also records ``saved_bytes``: the distinct storages autograd holds between forward and
backward (``semiseg_fast.utils.saved_tensor_bytes``), upsampling included for (a), (b), (c).
"""

from __future__ import annotations

import functools
import gc
import itertools
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import semiseg_fast as sf
from semiseg_fast import reference
from semiseg_fast.utils import saved_tensor_bytes

from . import cases
from .conftest import synchronize

# (name, N, C, h, w, H, W): the decoder's logits at stride 4 and the label resolution
SHAPES = [("voc", 4, 21, 129, 129, 513, 513), ("cityscapes", 2, 19, 193, 193, 769, 769)]
if cases.QUICK:
    SHAPES = [("tiny", 2, 21, 9, 10, 33, 37)]
OPS = ["pixel_stats", "pseudo_label_cross_entropy", "fixmatch_loss", "pseudoseg_consistency_loss"]
IMPLS = ["fused-size", "interp+eager", "interp+fused", "interp+compile"]
if cases.QUICK:  # the smoke test: one compile (fixmatch_loss) instead of four
    IMPLS = IMPLS[:3]
ALIGN_CORNERS = True
GROUP = "decoder resolution"


@dataclass
class Inputs:
    student: torch.Tensor  # (N, C, h, w)
    teacher: torch.Tensor  # (N, C, h, w): FixMatch's teacher, PseudoSeg's decoder logits, pixel_stats' input
    sgc: torch.Tensor  # (N, C, h, w): PseudoSeg's Grad-CAM logits
    target: torch.Tensor  # (N, H, W) uint8, 10% ignored (255)
    ignore_mask: torch.Tensor  # (N, H, W) uint8, 255 = ignored (UniMatch's padding)
    valid: torch.Tensor  # (N, H, W) bool, False in a Cutout box (PseudoSeg)
    size: tuple[int, int]


@functools.lru_cache(maxsize=1)
def inputs_for(shape, dtype_name, layout_name) -> Inputs:
    gc.collect()
    name, n, c, h, w, big_h, big_w = shape
    dtype, layout = cases.DTYPES[dtype_name], cases.LAYOUTS[layout_name]
    low = cases.make_inputs((name, n, c, h, w), dtype, layout)
    g = torch.Generator().manual_seed(7)
    dev = cases.device()
    sgc = (torch.randn(n, c, h, w, generator=g) * 2).to(dev, dtype).contiguous(memory_format=layout)
    target = torch.randint(0, c, (n, big_h, big_w), generator=g, dtype=torch.uint8)
    target[torch.rand(n, big_h, big_w, generator=g) < 0.1] = 255
    ignore = torch.zeros(n, big_h, big_w, dtype=torch.uint8)
    ignore[:, -big_h // 16 :] = 255
    valid = torch.ones(n, big_h, big_w, dtype=torch.bool)
    valid[:, big_h // 4 : big_h // 4 + big_h // 5, big_w // 3 : big_w // 3 + big_w // 5] = False
    return Inputs(low.student, low.teacher, sgc, target.to(dev), ignore.to(dev), valid.to(dev), (big_h, big_w))


def _up(t: torch.Tensor, inp: Inputs) -> torch.Tensor:
    return F.interpolate(t, inp.size, mode="bilinear", align_corners=ALIGN_CORNERS)


def loss_call(op: str, impl: str):
    """call(x, inp) of ``op`` by ``impl``; x is the decoder-resolution logits that get the gradient."""
    th = cases.THRESHOLD
    if impl == "fused-size":
        kw = lambda inp: dict(size=inp.size, align_corners=ALIGN_CORNERS)  # noqa: E731
        if op == "pixel_stats":
            return lambda x, inp: tuple(sf.pixel_stats(x, **kw(inp)))
        if op == "pseudo_label_cross_entropy":
            return lambda x, inp: sf.pseudo_label_cross_entropy(x, inp.target, **kw(inp))
        if op == "fixmatch_loss":
            return lambda x, inp: sf.fixmatch_loss(x, inp.teacher, th, inp.ignore_mask, **kw(inp))
        return lambda x, inp: sf.pseudoseg_consistency_loss(x, inp.teacher, inp.sgc, inp.valid, **kw(inp))
    lib = sf if impl == "interp+fused" else reference
    if op == "pixel_stats":
        return lambda x, inp: tuple(lib.pixel_stats(_up(x, inp)))
    if op == "pseudo_label_cross_entropy":
        return lambda x, inp: lib.pseudo_label_cross_entropy(_up(x, inp), inp.target)
    if op == "fixmatch_loss":
        return lambda x, inp: lib.fixmatch_loss(_up(x, inp), _up(inp.teacher, inp), th, inp.ignore_mask)
    ps = sf.pseudoseg_consistency_loss if lib is sf else reference.pseudoseg.pseudoseg_consistency_loss
    return lambda x, inp: ps(_up(x, inp), _up(inp.teacher, inp), _up(inp.sgc, inp), inp.valid)


def make_runner(op: str, impl: str, inp: Inputs):
    """(forward + gradient runner, forward-only call) at the decoder's resolution."""
    call = loss_call(op, impl)
    if impl == "interp+compile":
        call = torch.compile(call, fullgraph=True, dynamic=False)
    x = (inp.teacher if op == "pixel_stats" else inp.student).detach().requires_grad_()

    def run():
        out = call(x, inp)
        if op == "pixel_stats":  # through confidence and entropy (the label has no gradient)
            conf, _, ent = out
            return torch.autograd.grad((conf, ent), x, (torch.ones_like(conf), torch.ones_like(ent)))
        return torch.autograd.grad(out, x)

    return run, functools.partial(call, x, inp)


def case_params():
    for shape, dt, lay, op in itertools.product(SHAPES, cases.DTYPES, cases.LAYOUTS, OPS):
        impls = IMPLS + (["interp+compile"] if cases.QUICK and op == "fixmatch_loss" else [])
        for impl in impls:
            yield pytest.param(shape, dt, lay, op, impl, id=f"{op}-{shape[0]}-{dt}-{lay}-{impl}")


@pytest.mark.parametrize("shape,dtype,layout,op,impl", list(case_params()))
def test_decoder_resolution(benchmark, shape, dtype, layout, op, impl):
    inp = inputs_for(shape, dtype, layout)
    run, forward = make_runner(op, impl, inp)
    run()  # compiles torch.compile's graphs, fills the buffer caches: the first warm-up call
    synchronize()
    _, saved = saved_tensor_bytes(forward)
    logits = inp.student.numel() * inp.student.element_size()
    benchmark.group = f"{GROUP} {op} {shape[0]} {dtype} {layout}"
    benchmark.extra_info.update(
        suite=GROUP,
        loss=op,
        shape=list(shape[1:5]),
        size=list(shape[5:]),
        name=shape[0],
        dtype=dtype,
        layout=layout,
        mode="fwd+bwd",
        impl=impl,
        device=str(cases.device()),
        saved_bytes=saved,
        logits_bytes=logits,
    )
    # The baselines (a) and (c) take 1-3 s a call: 3 rounds after the two calls above; ours 11 (cheap, less noise).
    rounds, warmup = {"fused-size": (11, 1), "interp+fused": (5, 1)}.get(impl, (3, 0))
    benchmark.pedantic(lambda: (run(), synchronize()), rounds=rounds, iterations=1, warmup_rounds=warmup)
