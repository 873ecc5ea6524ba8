"""U2PL's per-epoch schedules (official train_semi.py; the paper's alpha_t = alpha_0 (1 - t / T))."""

from __future__ import annotations

from .. import _checks


def _epoch(epoch: int, epochs: int) -> tuple[int, int]:
    epochs = _checks.integer(epochs, "epochs")
    epoch = _checks.integer(epoch, "epoch")
    if epochs <= 0:
        raise ValueError(f"epochs: expected > 0, got {epochs}")
    if not 0 <= epoch <= epochs:
        raise ValueError(f"epoch: expected 0 <= epoch <= epochs={epochs}, got {epoch}")
    return epoch, epochs


def drop_percent(epoch: int, epochs: int, initial: float = 80.0) -> float:
    """The entropy percentile above which unlabeled pixels are dropped at 0-based ``epoch``:
    ``100 - (100 - initial) * (1 - epoch / epochs)``: 80 at the start (the top 20% most uncertain
    pixels dropped), tending to 100."""
    epoch, epochs = _epoch(epoch, epochs)
    initial = _checks.number(initial, "initial", low=0.0, high=100.0)
    return 100.0 - (100.0 - initial) * (1.0 - epoch / epochs)


def alpha_t(epoch: int, epochs: int, alpha_0: float = 20.0) -> float:
    """The percentage of reliable (lowest-entropy) and unreliable (highest-entropy) pixels used by
    the contrastive term: ``alpha_0 * (1 - epoch / epochs)``."""
    epoch, epochs = _epoch(epoch, epochs)
    alpha_0 = _checks.number(alpha_0, "alpha_0", low=0.0, high=50.0)
    return alpha_0 * (1.0 - epoch / epochs)
