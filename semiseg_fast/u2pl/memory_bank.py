"""Per-class FIFO memory bank of negative keys, on the device, updated for all classes at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from .. import _checks


class ClassMemoryBank(nn.Module):
    """One ring buffer of ``dim``-dimensional keys per class, oldest to newest.

    U2PL keeps ``capacity`` keys per class (30000, and 50000 for class 0 in the official code) and
    samples negatives from them. The official bank lives on the CPU as Python lists, with one
    barrier and one pickled all_gather per class per step; here all classes share one device
    buffer, a step appends to every class with one indexed copy, and under DDP one all_gather of
    fixed-size tensors replaces the per-class barriers, so every rank holds the same bank.

    The bank's state (keys, write heads, lengths) is a set of buffers: it follows ``.to()``,
    ``state_dict()`` and checkpoints.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        capacity: int | Sequence[int] = 30000,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        num_classes = _checks.integer(num_classes, "num_classes")
        dim = _checks.integer(dim, "dim")
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes, dim: expected >= 1, got {num_classes}, {dim}")
        caps = [capacity] * num_classes if isinstance(capacity, int) else list(capacity)
        if len(caps) != num_classes or any(not isinstance(c, int) or c < 1 for c in caps):
            raise ValueError(f"capacity: expected an int >= 1 or {num_classes} of them, got {capacity!r}")
        self.num_classes, self.dim = num_classes, dim
        cap = torch.tensor(caps, dtype=torch.int64, device=device)
        # Two extra rows at the end: one absorbs the writes of keys that do not fit (no data-dependent
        # shapes), one stays zero and is what an empty class reads.
        self.register_buffer("keys", torch.zeros(int(cap.sum()) + 2, dim, dtype=dtype, device=device))
        self.register_buffer("capacity", cap)
        self.register_buffer("offset", torch.cumsum(cap, 0) - cap)
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.int64, device=device))
        self.register_buffer("length", torch.zeros(num_classes, dtype=torch.int64, device=device))

    @property
    def trash_row(self) -> int:
        return self.keys.shape[0] - 2

    @property
    def zero_row(self) -> int:
        return self.keys.shape[0] - 1

    def _destinations(self, counts: torch.Tensor, length: int) -> torch.Tensor:
        """(C, length) rows of ``keys`` that the first counts[c] of L new keys of class c go to (the
        trash row for the rest, and for keys overwritten again within the same push); advances the
        write heads and lengths."""
        counts = counts.to(self.head.device, torch.int64).clamp(0, length)
        j = torch.arange(length, device=self.head.device)[None, :]
        cap = self.capacity[:, None]
        skip = (counts[:, None] - cap).clamp_min(0)  # keys overwritten again within this step
        keep = (j < counts[:, None]) & (j >= skip)
        slot = (self.head[:, None] + j) % cap
        rows = torch.where(keep, self.offset[:, None] + slot, torch.full_like(slot, self.trash_row))
        self.head.copy_((self.head + counts) % self.capacity)
        self.length.copy_(torch.minimum(self.length + counts, self.capacity))
        return rows

    def push(self, keys: torch.Tensor, counts: torch.Tensor) -> None:
        """Appends, for each class c, rows ``keys[c, :counts[c]]`` (oldest first) to class c's queue.

        keys: (C, L, dim); counts: (C,) integers in [0, L]. If a class receives more keys than
        its capacity, only the newest capacity ones stay, as with a list truncated to its tail.
        """
        c, length, d = keys.shape
        if c != self.num_classes or d != self.dim:
            raise ValueError(f"keys: expected shape ({self.num_classes}, L, {self.dim}), got {tuple(keys.shape)}")
        if counts.shape != (c,):
            raise ValueError(f"counts: expected shape ({c},), got {tuple(counts.shape)}")
        rows = self._destinations(counts, length)
        self.keys.index_copy_(0, rows.reshape(-1), keys.reshape(c * length, d).to(self.keys.dtype))

    def push_rows(self, source: torch.Tensor, index: torch.Tensor, counts: torch.Tensor) -> None:
        """push() of ``source[index]`` ((P, dim) rows, (C, L) indices) without building that
        (C, L, dim) tensor: rows are copied into the bank one class at a time."""
        c, length = index.shape
        if c != self.num_classes or source.dim() != 2 or source.shape[1] != self.dim:
            raise ValueError(
                f"source, index: expected (P, {self.dim}) and ({self.num_classes}, L), "
                f"got {tuple(source.shape)} and {tuple(index.shape)}"
            )
        if counts.shape != (c,):
            raise ValueError(f"counts: expected shape ({c},), got {tuple(counts.shape)}")
        rows = self._destinations(counts, length)
        for k in range(c):  # one class's keys at a time: L rows of temporary memory, not C * L
            self.keys.index_copy_(0, rows[k], source.index_select(0, index[k]).to(self.keys.dtype))

    def push_rows_all_ranks(self, source: torch.Tensor, index: torch.Tensor, counts: torch.Tensor, group=None) -> None:
        """push_rows() on one process; under DDP, push_all_ranks() of the gathered rows."""
        if not (dist.is_available() and dist.is_initialized()):
            self.push_rows(source, index, counts)
            return
        self.push_all_ranks(source[index], counts, group)

    def push_all_ranks(self, keys: torch.Tensor, counts: torch.Tensor, group=None) -> None:
        """push() of every rank's keys, in rank order, on every rank: one all_gather of the
        fixed-size (C, L, dim) keys and one of the counts. Without an initialised process group
        this is push()."""
        if not (dist.is_available() and dist.is_initialized()):
            self.push(keys, counts)
            return
        world = dist.get_world_size(group)
        all_keys = [torch.empty_like(keys) for _ in range(world)]
        all_counts = [torch.empty_like(counts) for _ in range(world)]
        dist.all_gather(all_keys, keys.contiguous(), group=group)
        dist.all_gather(all_counts, counts.contiguous(), group=group)
        for k, n in zip(all_keys, all_counts):
            self.push(k, n)

    def rows(self, classes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rows of ``keys`` at logical positions ``index`` (0 = oldest) of each class in ``classes``.

        classes: (K,) class ids; index: (K, M) positions, taken modulo the class's length (an
        empty class reads the zero row). Returns (K, M) int64."""
        cap = self.capacity[classes][:, None]
        length = self.length[classes][:, None]
        start = (self.head[classes][:, None] - length) % cap
        pos = (start + index % length.clamp_min(1)) % cap
        return torch.where(length > 0, self.offset[classes][:, None] + pos, torch.full_like(pos, self.zero_row))

    def gather(self, classes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The keys at :meth:`rows` (classes, index): (K, M, dim)."""
        rows = self.rows(classes, index)
        return torch.index_select(self.keys, 0, rows.reshape(-1)).reshape(*index.shape, self.dim)

    def queue(self, c: int) -> torch.Tensor:
        """Class c's keys, oldest first (a copy; reads the length on the host, for inspection)."""
        n = int(self.length[c])
        return self.gather(
            torch.tensor([c], device=self.keys.device), torch.arange(n, device=self.keys.device)[None, :]
        )[0]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, capacity={self.capacity.tolist()}"
