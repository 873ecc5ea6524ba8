"""Which samples each process sees at each step, as a pure function of (seed, step, rank).

Every source (labeled, unlabeled) is an endless stream of seeded permutations; step s of a
W-process run takes the s-th block of B*W stream positions and process r its r-th slice. Each
sample also gets its own augmentation seed from its stream position. Resuming at step s therefore
needs no sampler or RNG state, works with any number of DataLoader workers, and a rerun repeats
the same images with the same augmentations."""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import torch

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
    ``(index, augmentation_seed)`` pairs for process ``rank`` of ``world``; with ``crop_for_step``
    the items are ``(index, augmentation_seed, crop_size)`` (a schedule's crop at that step)."""

    def __init__(self, size: int, batch_size: int, seed: int, stream: int, start: int, stop: int,
                 rank: int = 0, world: int = 1, crop_for_step: Optional[Callable[[int], int]] = None):
        if size <= 0:
            raise ValueError(f"size: expected a non-empty dataset, got {size} items")
        self.size, self.batch_size, self.seed, self.stream = size, batch_size, seed, stream
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.crop_for_step = crop_for_step
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _item(self, position: int) -> Tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.stream, epoch))
            self._perm, self._epoch = torch.randperm(self.size, generator=g), epoch
        return int(self._perm[offset]), mix_seed(self.seed, self.stream, position, 1)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        per_step = self.batch_size * self.world
        for step in range(self.start, self.stop):
            first = step * per_step + self.rank * self.batch_size
            items = [self._item(p) for p in range(first, first + self.batch_size)]
            if self.crop_for_step is not None:
                crop = self.crop_for_step(step)
                items = [(index, seed, crop) for index, seed in items]
            yield items
