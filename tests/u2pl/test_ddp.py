"""Two processes, gloo on the CPU: every rank pushes its own negatives; after each step both
ranks hold the same memory bank, equal to pushing rank 0's then rank 1's negatives in one
process, and each rank's loss is the single-process loss on its own data against that bank."""

import faulthandler
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semiseg_fast.u2pl import ClassMemoryBank, ContrastiveDraws, u2pl_contrastive_loss
from tests.u2pl.test_contrastive import NEG, C, D, Q, inputs

KW = dict(low_rank=1, high_rank=4, num_queries=Q, num_negatives=NEG)
CAPS = [40] + [25] * (C - 1)
STEPS = 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _draws(step):
    g = torch.Generator().manual_seed(1000 + step)
    return ContrastiveDraws(
        torch.randint(0, 10**6, (C, Q), generator=g), torch.randint(0, 10**6, (C, Q * NEG), generator=g)
    )


def _worker(rank, world, port, out_dir):
    faulthandler.enable()  # a native abort prints this process's Python stack into the test's output
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    bank = ClassMemoryBank(C, D, capacity=CAPS)
    losses = [
        u2pl_contrastive_loss(*inputs(seed=10 * step + rank), bank, draws=_draws(step), **KW).detach()
        for step in range(STEPS)
    ]
    torch.save({"losses": torch.stack(losses), "bank": bank.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    # no rank tears gloo down while the other may still be in a collective (a SIGABRT with
    # 'terminate called without an active exception' was seen once under load, not reproduced since)
    dist.barrier()
    dist.destroy_process_group()


class _NoPushBank(ClassMemoryBank):
    """A bank that records what a step would push instead of pushing it."""

    def push_rows_all_ranks(self, source, index, counts, group=None):
        self.pushed = (source[index].clone(), counts.clone())


def test_two_ranks_share_one_bank(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in results[0]["bank"]:
        assert torch.equal(results[0]["bank"][key], results[1]["bank"][key]), key

    bank = ClassMemoryBank(C, D, capacity=CAPS)
    for step in range(STEPS):
        probes = []
        for rank in range(2):  # what each rank pushes this step, against the bank before the step
            probe = _NoPushBank(C, D, capacity=CAPS)
            probe.load_state_dict(bank.state_dict())
            u2pl_contrastive_loss(*inputs(seed=10 * step + rank), probe, draws=_draws(step), **KW)
            probes.append(probe)
        for probe in probes:  # rank order
            bank.push(*probe.pushed)
        for rank in range(2):
            frozen = _NoPushBank(C, D, capacity=CAPS)
            frozen.load_state_dict(bank.state_dict())
            loss = u2pl_contrastive_loss(*inputs(seed=10 * step + rank), frozen, draws=_draws(step), **KW)
            torch.testing.assert_close(loss.detach(), results[rank]["losses"][step], rtol=1e-5, atol=1e-6)
    for key, value in bank.state_dict().items():
        assert torch.equal(value, results[0]["bank"][key]), key
