"""Which samples each process sees at each step, as a pure function of (seed, step, rank) and
the schedule.

Every source (labeled, unlabeled) is an endless stream of seeded permutations; step s of a
W-process run takes the s-th block of B*W stream positions and process r its r-th slice (a step
of k batches under a schedule takes the k*B*W positions after the earlier steps' images, see
:meth:`Schedule.progress`). Each sample also gets its own augmentation seed from its stream
position. Resuming at step s therefore needs no sampler or RNG state, works with any number of
DataLoader workers, and a rerun repeats the same images with the same augmentations."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .schedule import Schedule

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing, so nearby inputs give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK


class StepBatches:
    """Batch sampler over ``size`` items: yields, for steps ``start .. stop-1``, lists of
    ``(index, augmentation_seed)`` pairs for process ``rank`` of ``world``. With a ``schedule``
    (:class:`~semiseg_fast.train.schedule.Schedule`) the items are ``(index, augmentation_seed,
    crop_size)`` with the schedule's crop at that step, and a step takes ``schedule.batch_scale(step)``
    times ``batch_size`` items, from the stream position its :meth:`progress` gives."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        stream: int,
        start: int,
        stop: int,
        rank: int = 0,
        world: int = 1,
        schedule: Schedule | None = None,
    ):
        if size <= 0:
            raise ValueError(f"size: expected a non-empty dataset, got {size} items")
        self.size, self.batch_size, self.seed, self.stream = size, batch_size, seed, stream
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.schedule = schedule
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _item(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.stream, epoch))
            self._perm, self._epoch = torch.randperm(self.size, generator=g), epoch
        return int(self._perm[offset]), mix_seed(self.seed, self.stream, position, 1)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_step = self.batch_size * self.world
        for step in range(self.start, self.stop):
            if self.schedule is None:
                first, batch = step * per_step, self.batch_size
            else:
                first = self.schedule.progress(step) * per_step
                batch = self.schedule.batch_scale(step) * self.batch_size
            first += self.rank * batch
            items = [self._item(p) for p in range(first, first + batch)]
            if self.schedule is not None:
                crop = self.schedule.crop_size(step)
                items = [(index, seed, crop) for index, seed in items]
            yield items
