"""GPU readiness without a GPU: compile every Triton kernel the library launches for sm_80 and
sm_90 ahead of time, read each cubin's resources with cuobjdump, and fail on a compile error,
on local memory (register spills) or on more registers than the kernel's budget.

    python -m semiseg_fast.tools.gpu_check                  # check; exit status 1 on any failure
    python -m semiseg_fast.tools.gpu_check --write-results  # also refresh the section of benchmarks/RESULTS.md

What is compiled is what the library really launches: the Triton wrappers are run on meta
tensors at real shapes (so strides and sizes get the divisibility specialisations a real
launch gets) with launching replaced by recording, over every dtype, class-count bucket,
memory layout and option the wrappers distinguish. Duplicates are compiled once. That includes
``size=`` (losses at the decoder's resolution): the kernels' RESAMPLE specialisations, with the
gradient scattered by atomics and, under torch.use_deterministic_algorithms, stored at full
resolution and gathered by semiseg_fast.triton.resample's kernel (labels carry "size=").

Register budgets. All kernels are memory-bound streaming kernels launched with 8 warps per
block, 4 tile elements per thread. The budget is 80 registers per thread for every kernel: at
8 warps that still allows 3 blocks (24 warps, 37.5% occupancy) per H100 SM; at 81 to 128 it
drops to 2 blocks (25%), which leaves too few loads in flight to cover DRAM latency.

One exception, in RESAMPLE_BUDGETS: PseudoSeg's kernel at the decoder's resolution with more than
64 classes holds three tensors' chunks, each read through four bilinear taps, and their running
statistics; on sm_80 it takes 95-98 registers at any tile from 128 to 512 elements (2 blocks
per SM). Read it as a known cost, not a pass.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import importlib
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the runtime default, stated to keep results stable

import torch  # noqa: E402

TARGETS = (80, 90)
# semiseg_fast/tools/gpu_check.py -> the checkout's root (the tool writes benchmarks/RESULTS.md there)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BUDGET = 80
BUDGETS = {
    "pixel_stats_kernel": 80,
    "pixel_stats_backward_kernel": 80,
    "cross_entropy_kernel": 80,
    "fixmatch_kernel": 80,
    "cps_kernel": 80,
    "pseudoseg_kernel": 80,
    "negative_mask_kernel": 80,
    "resample_grad_kernel": 80,
    "sumsq_kernel": 80,
    "radix_histogram_kernel": 80,
}
NO_TARGETS = (None, None, None, None)  # cps: label and confidence maps of neither network
# Budgets of the size= specialisations where they differ (see the module docstring).
RESAMPLE_BUDGETS = {"pseudoseg_kernel": 98}
H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3 (NVIDIA's figure)
ROOFLINE_SHAPES = {"VOC": (16, 21, 513, 513), "Cityscapes": (8, 19, 1024, 1024)}
RESULTS_BEGIN = "<!-- gpu-check:begin -->"
RESULTS_END = "<!-- gpu-check:end -->"


# ---------------------------------------------------------------- recording launches


def record_launches(fn: Callable[[], object]) -> list:
    """Runs fn() with every library kernel launch recorded instead of executed."""
    from ..triton import _common

    saved = _common._recorded_launches
    _common._recorded_launches = []
    try:
        fn()
        return _common._recorded_launches
    finally:
        _common._recorded_launches = saved


def _meta(shape, dtype, layout="nchw"):
    t = torch.empty(shape, dtype=dtype, device="meta")
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


SWEEP_SHAPES = [(16, 513, 513), (8, 1024, 1024)]  # VOC-like (odd sizes) and Cityscapes-like (multiples of 16)
SWEEP_CLASSES = [2, 4, 8, 16, 21, 64, 150, 1024]  # every BLOCK_C bucket, single-chunk and chunked
SWEEP_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SWEEP_LAYOUTS = ["nchw", "channels_last"]
# size=: the decoder's resolution of the VOC-like sweep shape (513 from output stride 4, align_corners
# style 129), and the class buckets that change the tile.
RESAMPLE_FROM = {(513, 513): (129, 129)}
RESAMPLE_CLASSES = [2, 21, 64, 150]


def _deterministic(fn: Callable[[], object]) -> Callable[[], object]:
    """fn run under torch.use_deterministic_algorithms(True) (the resampled gradient's gather path)."""

    def run():
        saved = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return fn()
        finally:
            torch.use_deterministic_algorithms(saved)

    return run


def resample_calls() -> list:
    """(label, thunk) of the size= launches: every op at the class buckets, dtypes and layouts, the
    deterministic gradient path, and the options at C=21, at the VOC-like shape only (odd sizes):
    with both shapes these compilations doubled the check's time in `make test`."""
    from ..triton.cps import cps
    from ..triton.cross_entropy import cross_entropy
    from ..triton.fixmatch import fixmatch
    from ..triton.pixel_stats import pixel_stats, pixel_stats_backward
    from ..triton.pseudoseg import logit_scale, pseudoseg_loss

    calls = []
    scale = torch.empty((), dtype=torch.float32, device="meta")
    for n, h, w in SWEEP_SHAPES[:1]:
        lh, lw = RESAMPLE_FROM[(h, w)]
        sz = (h, w)
        for c in RESAMPLE_CLASSES:
            for dt in SWEEP_DTYPES:
                for lay in SWEEP_LAYOUTS:
                    label = f"C={c} {str(dt)[6:]} {lay} {lh}x{lw} size={h}x{w}"
                    x = _meta((n, c, lh, lw), dt, lay)
                    u8 = torch.empty((n, h, w), dtype=torch.uint8, device="meta")
                    f32 = torch.empty((n, h, w), dtype=torch.float32, device="meta")
                    lab = torch.empty((n, h, w), dtype=torch.uint8, device="meta")
                    ce = lambda x=x, t=u8, sz=sz: cross_entropy(
                        x, t, None, 255, 1, 0, 0.0, None, True, False, sz, False
                    )
                    psb = lambda x=x, f=f32, lab=lab, sz=sz: pixel_stats_backward(x, f, lab, f, f, f, 1.0, sz, True)
                    calls += [
                        (label, lambda x=x, sz=sz: pixel_stats(x, 1.0, sz, True)),
                        (label, psb),
                        (
                            label,
                            lambda x=x, f=f32, lab=lab, sz=sz: pixel_stats_backward(
                                x, f, lab, f, None, f, 1.0, sz, True
                            ),
                        ),
                        (label, ce),
                        (label, lambda x=x, t=u8, sz=sz: fixmatch(x, x, 0.95, t, 255, 0, 0.0, True, sz, False)),
                        (label, lambda x=x, t=u8, sz=sz: cps(x, x, t, 255, 0.0, 0, 0.0, *NO_TARGETS, True, True, sz)),
                        (
                            label,
                            lambda x=x, sz=sz: pseudoseg_loss(
                                x, x, x, None, scale, 0.5, 0.5, 0.0, True, 0, 0.0, True, sz, True
                            ),
                        ),
                        (label, lambda x=x, sz=sz: logit_scale(x, x, sz, True)),
                        (label + " deterministic", _deterministic(ce)),
                        (label + " deterministic", _deterministic(psb)),
                    ]
    n, h, w = SWEEP_SHAPES[0]
    lh, lw = RESAMPLE_FROM[(h, w)]
    sz = (h, w)
    t = torch.empty((n, h, w), dtype=torch.int64, device="meta")
    for dt in SWEEP_DTYPES:
        for lay in SWEEP_LAYOUTS:
            x = _meta((n, 21, lh, lw), dt, lay)
            label = f"C=21 {str(dt)[6:]} {lay} {lh}x{lw} size={h}x{w} options"
            for weight in (torch.float32, torch.bool):
                wt = torch.empty((n, h, w), dtype=weight, device="meta")
                for red, need_grad, need_ce in [(0, True, False), (2, True, True), (1, False, False)]:
                    calls.append(
                        (
                            label,
                            lambda x=x, wt=wt, r=red, g=need_grad, ce=need_ce, sz=sz: cross_entropy(
                                x, t, wt, 255, r, 0, 0.0, None, g, ce, sz, True
                            ),
                        )
                    )
            for mask in (None, torch.bool, torch.int64):
                m = None if mask is None else torch.empty((n, h, w), dtype=mask, device="meta")
                for need_grad in (True, False):
                    calls.append(
                        (label, lambda x=x, m=m, g=need_grad, sz=sz: fixmatch(x, x, 0.95, m, 255, 4, 0.0, g, sz, True))
                    )
                calls.append(
                    (
                        label + " deterministic",
                        _deterministic(lambda x=x, m=m, sz=sz: fixmatch(x, x, 0.95, m, 255, 4, 0.0, True, sz, True)),
                    )
                )
            lab = torch.empty((n, h, w), dtype=torch.uint8, device="meta")
            conf = torch.empty((n, h, w), dtype=torch.float32, device="meta")
            for targets, grads in [((lab, conf, None, None), (True, False)), ((lab, conf, lab, conf), (True, True))]:
                calls.append(
                    (
                        label,
                        lambda x=x, t=targets, g=grads, sz=sz: cps(x, x, None, 255, 0.5, 1, 0.0, *t, *g, sz, True),
                    )
                )
            calls.append(
                (
                    label + " deterministic",
                    _deterministic(lambda x=x, sz=sz: cps(x, x, None, 255, 0.5, 0, 0.0, *NO_TARGETS, True, True, sz)),
                )
            )
            bool_mask = torch.empty((n, h, w), dtype=torch.bool, device="meta")
            for soft, temperature, threshold in [(False, 0.5, 0.0), (True, 1.0, 0.0), (True, 0.7, 0.5)]:
                calls.append(
                    (
                        label,
                        lambda x=x, m=bool_mask, so=soft, t=temperature, th=threshold, sz=sz: pseudoseg_loss(
                            x, x, x, m, scale, 0.5, t, th, so, 0, 0.0, True, sz, True
                        ),
                    )
                )
            calls.append(
                (
                    label + " deterministic",
                    _deterministic(
                        lambda x=x, sz=sz: pseudoseg_loss(
                            x, x, x, None, scale, 0.5, 0.5, 0.0, False, 0, 0.0, True, sz, True
                        )
                    ),
                )
            )
            calls.append(
                (
                    label,
                    lambda x=x, sz=sz: pseudoseg_loss(
                        x, x, x, None, scale, 0.5, 0.5, 0.0, True, 0, 0.0, False, sz, True
                    ),
                )
            )
    return calls


def sweep(only: str | None = None) -> list:
    """(label, kernel, grid, args, kwargs) of every distinct launch the Triton wrappers make (those
    whose label contains ``only``, when given)."""
    from ..triton.cps import cps
    from ..triton.cross_entropy import cross_entropy
    from ..triton.fixmatch import fixmatch
    from ..triton.infonce import infonce
    from ..triton.negative_mask import negative_mask
    from ..triton.newest_negatives import newest_negatives
    from ..triton.percentile import percentile, select_ranks
    from ..triton.photometric import photometric
    from ..triton.pixel_stats import pixel_stats, pixel_stats_backward
    from ..triton.pseudoseg import pseudoseg_loss

    calls = []  # (label, thunk)
    scale = torch.empty((), dtype=torch.float32, device="meta")
    for n, h, w in SWEEP_SHAPES:
        for c in SWEEP_CLASSES:
            for dt in SWEEP_DTYPES:
                for lay in SWEEP_LAYOUTS:
                    label = f"C={c} {str(dt)[6:]} {lay} {h}x{w}"
                    x = _meta((n, c, h, w), dt, lay)
                    u8 = torch.empty((n, h, w), dtype=torch.uint8, device="meta")
                    f32 = torch.empty((n, h, w), dtype=torch.float32, device="meta")
                    lab = torch.empty((n, h, w), dtype=torch.uint8 if c <= 255 else torch.int64, device="meta")
                    calls += [
                        (label, lambda x=x: pixel_stats(x, 1.0)),
                        (label, lambda x=x, f=f32, lab=lab: pixel_stats_backward(x, f, lab, f, f, f, 1.0)),
                        (label, lambda x=x, f=f32, lab=lab: pixel_stats_backward(x, f, lab, f, None, f, 1.0)),
                        (label, lambda x=x, t=u8: cross_entropy(x, t, None, 255, 1, 0, 0.0, None, True, False)),
                        (label, lambda x=x, t=u8: fixmatch(x, x, 0.95, t, 255, 0, 0.0, True)),
                        (label, lambda x=x, t=u8: cps(x, x, t, 255, 0.0, 0, 0.0, *NO_TARGETS, True, True)),
                        (label, lambda x=x, c=c: negative_mask(x, min(3, c - 1), 20)),
                        (
                            label,
                            lambda x=x, s=scale: pseudoseg_loss(x, x, x, None, s, 0.5, 0.5, 0.0, True, 0, 0.0, True),
                        ),
                    ]
    # Options, at the most common class count.
    n, h, w = SWEEP_SHAPES[0]
    for dt in SWEEP_DTYPES:
        for lay in SWEEP_LAYOUTS:
            x = _meta((n, 21, h, w), dt, lay)
            label = f"C=21 {str(dt)[6:]} {lay} {h}x{w} options"
            for tdt in (torch.uint8, torch.int64):
                t = torch.empty((n, h, w), dtype=tdt, device="meta")
                for weight in (None, torch.float32, torch.bool):
                    wt = None if weight is None else torch.empty((n, h, w), dtype=weight, device="meta")
                    for red, need_grad, need_ce in [
                        (1, True, False),
                        (1, False, False),
                        (0, True, False),
                        (2, True, True),
                    ]:
                        if need_ce and wt is None:
                            continue
                        calls.append(
                            (
                                label,
                                lambda x=x, t=t, wt=wt, r=red, g=need_grad, ce=need_ce: cross_entropy(
                                    x, t, wt, 255, r, 0, 0.0, None, g, ce
                                ),
                            )
                        )
            for mask in (None, torch.bool, torch.int64):
                m = None if mask is None else torch.empty((n, h, w), dtype=mask, device="meta")
                for need_grad in (True, False):
                    calls.append((label, lambda x=x, m=m, g=need_grad: fixmatch(x, x, 0.95, m, 255, 4, 0.0, g)))
            lab = torch.empty((n, h, w), dtype=torch.int64, device="meta")
            conf = torch.empty((n, h, w), dtype=torch.float32, device="meta")
            for targets, grads in [
                ((lab, conf, None, None), (True, True)),
                ((None, None, lab, conf), (True, False)),
                ((lab, conf, lab, conf), (False, True)),
            ]:
                calls.append((label, lambda x=x, t=targets, g=grads: cps(x, x, None, 255, 0.5, 1, 0.0, *t, *g)))
            bool_mask = torch.empty((n, h, w), dtype=torch.bool, device="meta")
            for soft, temperature, threshold in [(False, 0.5, 0.0), (True, 1.0, 0.0), (True, 0.7, 0.5)]:
                calls.append(
                    (
                        label,
                        lambda x=x, m=bool_mask, so=soft, t=temperature, th=threshold: pseudoseg_loss(
                            x, x, x, m, scale, 0.5, t, th, so, 0, 0.0, True
                        ),
                    )
                )
            calls.append((label, lambda x=x: pseudoseg_loss(x, x, x, None, scale, 0.5, 0.5, 0.0, True, 0, 0.0, False)))
    # photometric_loss: 1 and 2 sources, with and without identity, with and without the gradient.
    for dt in SWEEP_DTYPES:
        target = torch.empty((n, 3, h, w), dtype=dt, device="meta")
        for s in (1, 2):
            warped = torch.empty((s, n, 3, h, w), dtype=dt, device="meta")
            for identity in (None, warped):
                for g in (True, False):
                    label = f"photometric {str(dt)[6:]} S={s} identity={identity is not None} grad={g}"
                    calls.append((label, lambda t=target, x=warped, i=identity, g=g: photometric(t, x, i, 0.85, g)))
    calls += resample_calls()
    # entropy_percentile: fp32 entropy maps, with and without a valid mask, 1 to 3 percentiles.
    for n, h, w in SWEEP_SHAPES:
        ent = torch.empty((n, h, w), dtype=torch.float32, device="meta")
        valid = torch.empty((n, h, w), dtype=torch.bool, device="meta")
        for qs in ([80.0], [80.0, 20.0, 80.0]):
            for v in (valid, None):
                calls.append(
                    (
                        f"entropy {h}x{w} q={len(qs)} valid={v is not None}",
                        lambda e=ent, v=v, qs=qs: percentile(e, v, qs),
                    )
                )
    # ohem_cross_entropy's threshold: one rank of the true-class probabilities, no mask.
    for n, h, w in SWEEP_SHAPES:
        p = torch.empty((n, h, w), dtype=torch.float32, device="meta")
        rank = torch.empty((1,), dtype=torch.int64, device="meta")
        calls.append((f"ohem select {h}x{w}", lambda p=p, r=rank: select_ranks(p, None, r)))
    # U2PL's contrastive InfoNCE at the paper's sizes (21 slots, 256 queries, 50 negatives), 256-d and 64-d.
    meta = lambda *shape, dt=torch.float32: torch.empty(shape, dtype=dt, device="meta")
    for d in (256, 64):
        args = (meta(21, 256, d), meta(21, d), meta(650002, d), meta(21, 256, 50, dt=torch.int64), meta(21), 0.5)
        for need_grad in (True, False):
            calls.append((f"infonce D={d}", lambda a=args, g=need_grad: infonce(*a, g)))
    # U2PL's memory-bank push at feature resolution: the paper's rank window, and the official quirks.
    p = 4 * 129 * 129
    push = (meta(4, 21, 129, 129), meta(p, dt=torch.int64), meta(p, dt=torch.bool), meta(4, dt=torch.bool))
    for quirks in (False, True):
        calls.append((f"push quirks={quirks}", lambda q=quirks: newest_negatives(*push, 3, 20, 1.0, 4096, q)))
    out = []
    for label, thunk in calls:
        if only is not None and only not in label:
            continue
        for kernel, grid, args, kwargs in record_launches(thunk):
            out.append((label, kernel, grid, args, kwargs))
    return out


# ---------------------------------------------------------------- compiling


@dataclasses.dataclass
class Job:
    module: str
    name: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    cc: int
    labels: list


def _target(cc: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", cc, 32)


def specialize(kernel, args, kwargs, cc: int):
    """What triton's launcher would compile for these arguments: (signature, constexprs, attrs, options)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(_target(cc))
    kwargs = dict(kwargs, debug=False)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    opts = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages", "num_ctas", "maxnreg")}
    return signature, constexprs, attrs, opts


def jobs_for(launches: Iterable, targets=TARGETS) -> list:
    jobs: dict = {}
    for label, kernel, _grid, args, kwargs in launches:
        for cc in targets:
            sig, const, attrs, opts = specialize(kernel, args, kwargs, cc)
            key = (
                kernel.fn.__module__,
                kernel.fn.__name__,
                cc,
                repr(sorted(sig.items())),
                repr(sorted(const.items())),
                repr(sorted(attrs.items())),
                repr(sorted(opts.items())),
            )
            if key not in jobs:
                jobs[key] = Job(kernel.fn.__module__, kernel.fn.__name__, sig, const, attrs, opts, cc, [])
            if label not in jobs[key].labels:
                jobs[key].labels.append(label)
    return list(jobs.values())


def cuobjdump_path() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise RuntimeError(f"cuobjdump not found at {path} (it ships with the triton wheel)")
    return path


_USAGE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> dict:
    """{function name: dict(regs, stack, shared, local)} as cuobjdump --dump-resource-usage reports."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run(
            [cuobjdump_path(), "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(path)
    return {
        m.group(1): dict(regs=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)), local=int(m.group(5)))
        for m in _USAGE.finditer(out)
    }


def compile_job(job: Job) -> dict:
    """Compiles one specialisation; returns its resources or its error."""
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as triton_compile

    result = dict(
        kernel=job.name,
        cc=job.cc,
        labels=job.labels,
        num_warps=job.options.get("num_warps", 4),
        constexprs={str(k): v for k, v in job.constexprs.items()},
        error=None,
    )
    t0 = time.time()
    try:
        fn = getattr(importlib.import_module(job.module), job.name)
        backend = make_backend(_target(job.cc))
        options = backend.parse_options(dict(job.options, debug=False))
        ck = triton_compile(
            ASTSource(fn, job.signature, job.constexprs, job.attrs), target=_target(job.cc), options=options.__dict__
        )
        usage = resource_usage(ck.asm["cubin"])
        if job.name not in usage:
            raise RuntimeError(f"cuobjdump reported no function {job.name}: {sorted(usage)}")
        result.update(usage[job.name])
        result["shared"] = max(result["shared"], int(getattr(ck.metadata, "shared", 0) or 0))
    except Exception as e:  # a compile error is a finding, not a crash of the check
        result["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    result["seconds"] = time.time() - t0
    return result


def compile_all(jobs: list, workers: int) -> list:
    if workers <= 1:
        return [compile_job(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(compile_job, jobs, chunksize=4))


# ---------------------------------------------------------------- judging


def occupancy_h100(regs: int, num_warps: int, shared: int) -> float:
    """Resident warps / 64 on an H100 SM: 65536 registers (allocated per warp in units of 256),
    64 warps, 32 blocks and 228 KiB of shared memory (1 KiB reserved per block)."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = 65536 // (regs_per_warp * num_warps)
    by_warps = 64 // num_warps
    by_smem = (228 * 1024) // (shared + 1024) if shared else 32
    blocks = min(by_regs, by_warps, by_smem, 32)
    return blocks * num_warps / 64


def judge(result: dict, budgets: dict | None = None) -> list:
    """The reasons this compiled kernel fails the check (empty when it passes)."""
    budgets = BUDGETS if budgets is None else budgets
    if result["error"]:
        return [f"does not compile: {result['error']}"]
    problems = []
    if result["local"] > 0 or result["stack"] > 0:
        problems.append(f"uses local memory ({result['local']} B local, {result['stack']} B stack): register spills")
    budget = budgets.get(result["kernel"], DEFAULT_BUDGET)
    if any("size=" in label for label in result.get("labels", ())):
        budget = RESAMPLE_BUDGETS.get(result["kernel"], budget)
    if result["regs"] > budget:
        problems.append(f"{result['regs']} registers > budget {budget}")
    return problems


# ---------------------------------------------------------------- the report


def minimal_bytes(op: str, shape, esize: int = 2) -> int:
    """Bytes each op must move at (N, C, H, W) with bf16 logits and uint8 labels/masks; the losses
    write their gradient in fp32 (twice the logits' bytes), rounded once in backward."""
    n, c, h, w = shape
    logits = n * c * h * w * esize
    px = n * h * w
    grad = 2 * logits
    return {
        "pixel_stats": logits + 9 * px,  # read logits; write conf, label, entropy
        "pixel_stats_backward": logits + 17 * px + logits,  # logits, 4 per-pixel inputs; write grad
        "cross_entropy (fwd+grad)": logits + px + grad,  # logits, target; write grad
        "fixmatch (fwd+grad)": 2 * logits + px + grad,  # student, teacher, mask; write grad
        "cps (fwd+grad)": 2 * logits + px + 2 * grad,  # both networks' logits, mask; write both grads
        "pseudoseg (scale + fwd+grad)": 2 * logits + 3 * logits + px + grad,  # scale: p, m; then p, m, z, mask; grad
        "grad_output scaling (backward)": grad + logits,  # read the fp32 gradient, write it as bf16
    }[op]


def render(results: list, seconds: float) -> str:
    lines = [RESULTS_BEGIN, "## GPU readiness: ahead-of-time compile of every Triton kernel", ""]
    w = lines.append
    w("Generated by `python -m semiseg_fast.tools.gpu_check --write-results` on a machine without a GPU: every")
    w("specialisation the library launches is compiled with Triton for sm_80 and sm_90 and its cubin")
    w("read with `cuobjdump --dump-resource-usage`. A kernel fails the check if it does not compile,")
    w("uses local memory (spills) or exceeds its register budget (80 for all kernels: at 8 warps per")
    w("block that keeps 3 blocks, 37.5% occupancy, per H100 SM; see the module docstring).")
    w("")
    w(f"{len(results)} compilations in {seconds:.0f} s.")
    w("")
    w(
        "| kernel | target | specialisations | registers (min-max) | local B | shared B (max) "
        "| H100 occupancy (min) | budget | status |"
    )
    w("|---|---|---:|---|---:|---:|---:|---:|---|")
    by = {}
    for r in results:
        by.setdefault((r["kernel"], r["cc"]), []).append(r)
    for (kernel, cc), rs in sorted(by.items()):
        ok = [r for r in rs if not r["error"]]
        fails = sum(1 for r in rs if judge(r))
        regs = [r["regs"] for r in ok]
        occ = min((occupancy_h100(r["regs"], r["num_warps"], r["shared"]) for r in ok), default=0)
        w(
            f"| {kernel} | sm_{cc} | {len(rs)} | {min(regs, default=0)}-{max(regs, default=0)} | "
            f"{max((r['local'] for r in ok), default=0)} | {max((r['shared'] for r in ok), default=0)} | "
            f"{100 * occ:.0f}% | {BUDGETS.get(kernel, DEFAULT_BUDGET)} | "
            f"{'ok' if not fails else f'{fails} FAIL'} |"
        )
    w("")
    w("Registers by class-count bucket (sm_90, all dtypes and layouts):")
    w("")
    w("| kernel | tile (classes x pixels) | registers | H100 occupancy |")
    w("|---|---|---|---:|")
    buckets = {}
    for r in results:
        if r["cc"] != 90 or r["error"]:
            continue
        key = (r["kernel"], _bucket(r["kernel"], r["labels"]))
        buckets.setdefault(key, []).append(r)
    for (kernel, bucket), rs in sorted(buckets.items()):
        regs = [r["regs"] for r in rs]
        occ = min(occupancy_h100(r["regs"], r["num_warps"], r["shared"]) for r in rs)
        w(f"| {kernel} | {bucket} | {min(regs)}-{max(regs)} | {100 * occ:.0f}% |")
    w("")
    w("Roofline on H100 SXM (3.35 TB/s HBM3): minimal bytes each op moves with bf16 logits and")
    w("uint8 labels, and the time that takes at full bandwidth. The GPU column stays empty until a")
    w("run on a GPU fills it.")
    w("")
    w("| op | shape (N, C, H, W) | minimal MB | roofline us | GPU us |")
    w("|---|---|---:|---:|---:|")
    for op in (
        "pixel_stats",
        "pixel_stats_backward",
        "cross_entropy (fwd+grad)",
        "fixmatch (fwd+grad)",
        "cps (fwd+grad)",
        "pseudoseg (scale + fwd+grad)",
        "grad_output scaling (backward)",
    ):
        for name, shape in ROOFLINE_SHAPES.items():
            b = minimal_bytes(op, shape)
            w(f"| {op} | {name} {shape} | {b / 1e6:.1f} | {b / H100_BANDWIDTH * 1e6:.1f} | |")
    w("")
    w("The losses keep their gradient in fp32 for bf16 logits; backward multiplies it by the incoming")
    w("gradient and rounds once to bf16 (one read of it, one write of the result). For fp32 logits on")
    w("the CPU an incoming gradient of exactly 1 skips that pass; on CUDA testing for 1 would need a")
    w("host sync, so the pass always runs.")
    w("")
    w("CUDA C++ sources: none. The CUDA path is Triton only, so there is nothing for `nvcc -c`.")
    w(RESULTS_END)
    return "\n".join(lines)


def _bucket(kernel: str, labels: list) -> str:
    """The tile configuration a launch label's class count selects, e.g. '32 classes x 32 px, 4 warps'."""
    from ..triton._common import CHUNK_CLASSES, KERNEL_TILES, MAX_BLOCK_C, block_config

    if not labels[0].startswith("C="):
        return "per-element (no class tile)"
    c = int(labels[0].split()[0].split("=")[1])
    resample = any("size=" in label for label in labels)
    chunk, tiles = CHUNK_CLASSES.get(kernel, MAX_BLOCK_C), KERNEL_TILES.get(kernel, {})
    block_p, block_c, chunks, warps = block_config(c, chunk, resample, **tiles)
    kind = "1 chunk" if chunks == 1 else "chunked"
    return f"{block_c} x {block_p} px, {kind}, {warps} warps"


def write_results_section(section: str, path: str) -> None:
    text = open(path).read() if os.path.exists(path) else ""
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head = text[: text.index(RESULTS_BEGIN)]
        tail = text[text.index(RESULTS_END) + len(RESULTS_END) :]
        text = head + section + tail
    else:
        text = text.rstrip() + ("\n\n" if text else "") + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities, e.g. 80,90")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    ap.add_argument("--write-results", action="store_true", help="refresh the section in benchmarks/RESULTS.md")
    ap.add_argument("--only", default=None, help='check only the launches whose label contains this, e.g. "size="')
    ap.add_argument(
        "--results",
        default=os.path.join(REPO_ROOT, "benchmarks", "RESULTS.md"),
    )
    args = ap.parse_args(argv)
    targets = tuple(int(t) for t in args.targets.split(","))
    t0 = time.time()
    if args.only is not None and args.write_results:
        ap.error("--write-results needs the whole sweep (no --only)")
    launches = sweep(args.only)
    jobs = jobs_for(launches, targets)
    print(
        f"gpu_check: {len(launches)} recorded launches -> {len(jobs)} distinct compilations "
        f"for {', '.join(f'sm_{t}' for t in targets)}",
        flush=True,
    )
    results = compile_all(jobs, args.jobs)
    seconds = time.time() - t0
    failures = [(r, judge(r)) for r in results if judge(r)]
    for r, problems in failures:
        print(f"FAIL {r['kernel']} sm_{r['cc']} [{'; '.join(r['labels'][:3])}]: {'; '.join(problems)}")
    print(render(results, seconds).replace(RESULTS_BEGIN, "").replace(RESULTS_END, ""))
    if args.write_results:
        write_results_section(render(results, seconds), args.results)
        print("wrote", args.results)
    print(f"gpu_check: {len(results) - len(failures)}/{len(results)} ok in {seconds:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
