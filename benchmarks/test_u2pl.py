"""U2PL: fused vs the official-style transcription (semiseg_fast.reference.u2pl).

torch.compile is not a baseline here: the official functions call NumPy on the host
(np.percentile) and index with data-dependent boolean masks, so they do not compile fullgraph.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import semiseg_fast as sf
from semiseg_fast.reference import u2pl as ref
from semiseg_fast.u2pl import ClassMemoryBank, u2pl_contrastive_loss, u2pl_unsupervised_loss

from . import cases
from .conftest import synchronize

N, C, H, W = (2, 21, 33, 35) if cases.QUICK else (4, 21, 513, 513)
FEAT = (4, 21, 17, 17) if cases.QUICK else (4, 21, 129, 129)  # U2PL's feature resolution for 513 crops
PERCENT = 80.0
UNSUPERVISED_GROUP = "teacher pixel_stats + u2pl_unsupervised_loss fwd+bwd"


@functools.lru_cache(maxsize=1)
def unsup_inputs():
    inp = cases.make_inputs(("u2pl", N, C, H, W), torch.float32, torch.contiguous_format, seed=3)
    pseudo = inp.teacher.argmax(1).to(torch.uint8)
    pseudo[:, -H // 16 :] = 255
    return inp.student, inp.teacher, pseudo


def _time(benchmark, fn, group, impl, nbytes=0, rounds=None, **info):
    benchmark.group = group
    benchmark.extra_info.update(op=group, impl=impl, bytes=nbytes, device=str(cases.device()), **info)
    fn()
    synchronize()
    benchmark.pedantic(
        lambda: (fn(), synchronize()), rounds=rounds or (11 if impl == "fused" else 5), iterations=1, warmup_rounds=1
    )


@pytest.mark.parametrize("impl", ["fused", "official"])
def test_unsupervised_loss(benchmark, impl):
    student, teacher, pseudo = unsup_inputs()
    x = student.detach().requires_grad_()
    if impl == "fused":  # the teacher's one-pass statistics, then the loss from them: timed together
        fn = lambda: torch.autograd.grad(u2pl_unsupervised_loss(x, sf.pixel_stats(teacher), pseudo, PERCENT), x)
    else:  # the official function takes the teacher's softmax inside and int64 targets
        target = pseudo.long()
        fn = lambda: torch.autograd.grad(ref.unsupervised_loss(x, target, PERCENT, teacher), x)
    nbytes = 2 * x.numel() * 4 + pseudo.numel() + x.numel() * 4  # read both logits and labels, write the gradient
    _time(benchmark, fn, UNSUPERVISED_GROUP, impl, nbytes, shape=[N, C, H, W])


@pytest.mark.parametrize("impl", ["fused", "numpy"])
def test_percentile(benchmark, impl):
    _, teacher, pseudo = unsup_inputs()
    ent = sf.pixel_stats(teacher).entropy
    valid = pseudo != 255
    if impl == "fused":
        fn = lambda: sf.entropy_percentile(ent, valid, [PERCENT, 20.0, 80.0])
    else:
        fn = lambda: np.percentile(ent[valid].cpu().numpy(), [PERCENT, 20.0, 80.0])  # as U2PL does, 3 times
    _time(benchmark, fn, "entropy_percentile (3 q)", impl, ent.numel() * 5, shape=[N, H, W])


@pytest.mark.parametrize("where", ["full resolution", "feature resolution"])
@pytest.mark.parametrize("impl", ["fused", "sort-based"])
def test_negative_class_mask(benchmark, impl, where):
    n, c, h, w = (N, C, H, W) if where == "full resolution" else FEAT
    prob = torch.softmax(torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0)) * 3, 1)
    if impl == "fused":
        fn = lambda: sf.negative_class_mask(prob, 3, 20)
    else:
        fn = lambda: _official_rank_masks(prob, 3, 20)
    _time(benchmark, fn, f"negative_class_mask {where}", impl, prob.numel() * 5, shape=[n, c, h, w])


def _official_rank_masks(prob, low, high):
    """As U2PL builds them: a full sort over C, then per class a test against the rank window."""
    idx = torch.sort(prob, dim=1, descending=True).indices.permute(0, 2, 3, 1)
    return torch.stack([idx[..., low:high].eq(i).sum(-1) > 0 for i in range(prob.shape[1])], dim=1)


@functools.lru_cache(maxsize=1)
def contrastive_inputs():
    d = 64 if cases.QUICK else 256
    return (*cases.contrastive_inputs(FEAT, d), d)


@pytest.mark.parametrize("impl", ["fused", "official"])
def test_contrastive_step_with_full_bank(benchmark, impl):
    rep, rep_t, prob, label, rel, unrel, isl, d = contrastive_inputs()
    c = prob.shape[1]
    caps = ([500] + [300] * (c - 1)) if cases.QUICK else ([50000] + [30000] * (c - 1))
    fill = torch.randn(max(caps), d, generator=torch.Generator().manual_seed(2))
    x = rep.detach().requires_grad_()
    if impl == "fused":
        bank = ClassMemoryBank(c, d, capacity=caps)
        bank.push(fill.expand(c, -1, -1)[:, : max(caps)], torch.tensor(caps))
        g = torch.Generator().manual_seed(0)
        fn = lambda: torch.autograd.grad(
            u2pl_contrastive_loss(x, rep_t, prob, label, rel, unrel, isl, bank, generator=g), x
        )
    else:
        bank = ref.MemoryBank(c, d, caps)
        for k in range(c):
            bank.enqueue(k, fill[: caps[k]])
        g = torch.Generator().manual_seed(0)
        draws_a = {k: torch.randint(0, 10**6, (256,), generator=g) for k in range(c)}
        draws_n = {k: torch.randint(0, 10**6, (256 * 50,), generator=g) for k in range(c)}
        fn = lambda: torch.autograd.grad(
            ref.contrastive_loss(x, rep_t, prob, label, rel, unrel, isl, bank, draws_a, draws_n), x
        )
    _time(benchmark, fn, "u2pl contrastive step, full bank", impl, 0, rounds=3, shape=list(FEAT) + [d])


def test_u2pl_floor_percentile_alone(benchmark):
    """The percentile's own cost inside the fused loss (one q), for the floor of the U2PL target."""
    _, teacher, pseudo = unsup_inputs()
    ent = sf.pixel_stats(teacher).entropy
    valid = pseudo != 255
    _time(
        benchmark,
        lambda: sf.entropy_percentile(ent, valid, PERCENT),
        "machine",
        "fused",
        0,
        kind="u2pl_percentile",
        shape=[N, H, W],
    )
