"""Resident memory of one U2PL contrastive step (loss and gradient) at the paper's settings:
4x256x129x129 features, 21 classes, 256 queries, 50 negatives, a full bank (50000 keys for class 0,
30000 for the others). In a fresh process, after the inputs and the bank are built, the peak
resident memory is reset; the figure is how far one step raises it, first-use costs (thread pools,
the CPU buffer cache's first blocks) included.

``python -m benchmarks.contrastive_memory fused|official`` prints one JSON line; ``write_results.py``
runs both and puts the figures in RESULTS.md.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys

import torch

from . import cases  # torch and semiseg_fast only: the process is what a training script has loaded

FEAT = (4, 21, 17, 17) if cases.QUICK else (4, 21, 129, 129)  # as benchmarks/test_u2pl.py
QUERIES, NEGATIVES = 256, 50


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def measure(impl: str) -> dict:
    from semiseg_fast.reference import u2pl as ref
    from semiseg_fast.u2pl import ClassMemoryBank, u2pl_contrastive_loss

    b, c, h, w = FEAT
    d = 64 if cases.QUICK else 256
    rep, rep_t, prob, label, reliable, unreliable, is_labeled = cases.contrastive_inputs(FEAT, d)
    rep.requires_grad_()
    caps = ([500] + [300] * (c - 1)) if cases.QUICK else ([50000] + [30000] * (c - 1))
    fill = torch.randn(max(caps), d, generator=torch.Generator().manual_seed(2))
    if impl == "fused":
        bank = ClassMemoryBank(c, d, capacity=caps)
        bank.push(fill.expand(c, -1, -1), torch.tensor(caps))
        step = lambda: u2pl_contrastive_loss(
            rep, rep_t, prob, label, reliable, unreliable, is_labeled, bank, generator=torch.Generator()
        )
    else:
        bank = ref.MemoryBank(c, d, caps)
        for k in range(c):
            bank.enqueue(k, fill[: caps[k]].clone())
        gd = torch.Generator().manual_seed(0)
        draws_a = {k: torch.randint(0, 10**6, (QUERIES,), generator=gd) for k in range(c)}
        draws_n = {k: torch.randint(0, 10**6, (QUERIES * NEGATIVES,), generator=gd) for k in range(c)}
        step = lambda: ref.contrastive_loss(
            rep, rep_t, prob, label, reliable, unreliable, is_labeled, bank, draws_a, draws_n
        )
    del fill
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: the step must map its own
    before = _status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak resident size, to VmRSS
        f.write("5")
    torch.autograd.grad(step(), rep)
    return dict(impl=impl, features=[b, d, h, w], before_mb=before, peak_rise_mb=_status("VmHWM:") - before)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1] if len(sys.argv) > 1 else "fused")))
