"""Training schedules: the learning rate, crop size and batch size of every optimizer step.

``standard``: linear warm-up, then poly decay, at the full crop size throughout.

``fast2x`` (the fast schedule of Zhu et al. 2020, as this project defines it, since the paper's
details are not public): the first ``low_res_fraction`` of the training budget (warm-up included)
trains on crops ``low_res_scale`` times the full side (rounded to a multiple of 4), the rest at
full size. Per-step costs that do not shrink with the crop (the optimizer, per-layer overheads
of convolutions on tiny feature maps) would eat most of the gain, so, trading spatial size for
batch size as multigrid training does (Wu et al. 2020), a reduced step takes ``low_res_batch``
times the images: the reduced phase sees the same images in fewer, fuller steps. The learning
rate warms up, holds, then decays: the reduced phase runs at ``low_res_lr * lr`` throughout
(the warm-up ramps to that rate; ``low_res_lr=None`` follows the run's poly curve instead), and
the full-size phase restarts at ``full_res_lr * lr`` and decays (poly) to 0 over that phase
(``full_res_lr=None`` continues the run's curve instead). The defaults (80% of the images on
0.6-side crops, two batches per step held at half the rate, then a restart at the full rate)
were chosen on the embedded dataset (docs/experiments.md, "The learning rate" and "fast2x over
eight seeds"), where they train on 46% of the standard schedule's pixels in 60% of its optimizer
steps.

The budget, ``total_steps``, is counted in steps of the configured batch (the standard
schedule's steps; ``warmup_steps`` too); :attr:`Schedule.num_steps` is the number of optimizer
steps, and :meth:`Schedule.batch_scale` the images of a step in multiples of the configured
batch. The learning rate follows the standard curve over the images seen, so a step of k
batches advances it by k. A loop that uses this schedule must draw ``batch_scale(step)`` batches
at each step.

Use it from any loop::

    sched = Schedule.fast2x(total_steps=10_000, lr=0.01, crop_size=512)
    for step in range(sched.num_steps):
        lr, crop, k = sched.lr(step), sched.crop_size(step), sched.batch_scale(step)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import _checks
from .start import base_lr

KINDS = ("standard", "fast2x")


@dataclass(frozen=True)
class Schedule:
    total_steps: int  # the budget, in steps of the configured batch
    base_lr: float
    full_crop: int
    warmup_steps: int = 0
    poly_power: float = 0.9
    low_res_fraction: float = 0.0  # share of the budget (images) at the reduced crop (0: standard)
    low_res_scale: float = 1.0  # reduced crop side / full crop side
    full_res_lr: float | None = None  # restart factor of the full-resolution phase (None: no restart)
    low_res_batch: int = 1  # images per reduced-phase step, in multiples of the configured batch
    low_res_lr: float | None = None  # the reduced phase's held rate, a factor of base_lr (None: poly curve)

    def __post_init__(self):
        for name in ("total_steps", "full_crop"):
            if _checks.integer(getattr(self, name), name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if _checks.integer(self.warmup_steps, "warmup_steps") < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        for name in ("base_lr", "low_res_lr"):
            value = getattr(self, name)
            if value is not None and _checks.number(value, name, low=0.0, low_open=True) == math.inf:
                raise ValueError(f"{name}: expected a finite number, got {value}")
        _checks.number(self.poly_power, "poly_power", low=0.0)
        _checks.number(self.low_res_fraction, "low_res_fraction", low=0.0, high=1.0)
        _checks.number(self.low_res_scale, "low_res_scale", low=0.0, high=1.0, low_open=True)
        if self.full_res_lr is not None:
            _checks.number(self.full_res_lr, "full_res_lr", low=0.0, high=1.0, low_open=True)
        if _checks.integer(self.low_res_batch, "low_res_batch") < 1:
            raise ValueError(f"low_res_batch: expected a positive integer, got {self.low_res_batch}")
        if self.low_res_fraction > 0 and self.low_res_steps == 0:
            raise ValueError(
                f"low_res_fraction: {self.low_res_fraction} of a budget of {self.total_steps} steps in "
                f"steps of {self.low_res_batch} batches rounds to no reduced step; expected a larger "
                "fraction or budget, or a smaller low_res_batch"
            )

    @classmethod
    def standard(
        cls, total_steps: int, lr: float, crop_size: int, warmup_steps: int = 0, poly_power: float = 0.9
    ) -> Schedule:
        return cls(total_steps, lr, crop_size, warmup_steps, poly_power)

    @classmethod
    def fast2x(
        cls,
        total_steps: int,
        lr: float,
        crop_size: int,
        warmup_steps: int = 0,
        poly_power: float = 0.9,
        low_res_fraction: float = 0.8,
        low_res_scale: float = 0.6,
        full_res_lr: float | None = 1.0,
        low_res_batch: int = 2,
        low_res_lr: float | None = 0.5,
    ) -> Schedule:
        return cls(
            total_steps,
            lr,
            crop_size,
            warmup_steps,
            poly_power,
            low_res_fraction,
            low_res_scale,
            full_res_lr,
            low_res_batch,
            low_res_lr,
        )

    @property
    def low_res_steps(self) -> int:
        """Optimizer steps at the reduced crop."""
        return min(
            int(round(self.low_res_fraction * self.total_steps / self.low_res_batch)),
            self.total_steps // self.low_res_batch,
        )

    @property
    def low_res_budget(self) -> int:
        """The reduced phase's share of the budget, in steps of the configured batch."""
        return self.low_res_steps * self.low_res_batch

    @property
    def num_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.low_res_steps + self.total_steps - self.low_res_budget

    def batch_scale(self, step: int) -> int:
        """Images of ``step`` in multiples of the configured batch."""
        self._check_step(step)
        return self.low_res_batch if step < self.low_res_steps else 1

    def progress(self, step: int) -> int:
        """The budget used before ``step``, in steps of the configured batch (images seen / batch)."""
        self._check_step(step)
        low = self.low_res_steps
        return step * self.low_res_batch if step < low else self.low_res_budget + step - low

    @property
    def low_res_crop(self) -> int:
        return max(8, min(self.full_crop, int(round(self.full_crop * self.low_res_scale / 4)) * 4))

    def lr(self, step: int) -> float:
        """Linear warm-up to ``base_lr``, then ``base_lr * (1 - t / total_steps) ** poly_power`` with
        t = :meth:`progress`; with ``low_res_lr``, the reduced phase holds ``low_res_lr * base_lr``
        (decaying from it only when no full-size phase follows), and with ``full_res_lr`` the
        full-resolution phase restarts at ``full_res_lr * base_lr``. The warm-up ramps to the rate
        of the phase it is in, so one that outlasts the reduced phase steps at its end."""
        t = self.progress(step)
        low, total = self.low_res_budget, self.total_steps
        if self.low_res_lr is not None and t < low:
            peak = self.base_lr * self.low_res_lr
            decay = 1.0 if low < total else (1.0 - t / total) ** self.poly_power
        elif self.full_res_lr is not None and 0 < low <= t:
            peak = self.base_lr * self.full_res_lr
            decay = (1.0 - (t - low) / (total - low)) ** self.poly_power
        else:
            peak = self.base_lr
            decay = (1.0 - t / total) ** self.poly_power
        return peak * (t + 1) / self.warmup_steps if t < self.warmup_steps else peak * decay

    def crop_size(self, step: int) -> int:
        self._check_step(step)
        return self.low_res_crop if step < self.low_res_steps else self.full_crop

    def phases(self) -> list[dict[str, Any]]:
        """The phases as (first step, last step + 1, crop size, batch scale), for logs and docs."""
        out = []
        low = self.low_res_steps
        if low:
            out.append(dict(start=0, stop=low, crop=self.low_res_crop, batch_scale=self.low_res_batch))
        if low < self.num_steps:
            out.append(dict(start=low, stop=self.num_steps, crop=self.full_crop, batch_scale=1))
        return out

    def relative_pixels(self) -> float:
        """Pixels trained on, relative to the standard schedule (a proxy for compute)."""
        low = self.low_res_budget
        return (low * self.low_res_crop**2 + (self.total_steps - low) * self.full_crop**2) / (
            self.total_steps * self.full_crop**2
        )

    def _check_step(self, step: int) -> None:
        if _checks.integer(step, "step") < 0 or step >= self.num_steps:
            raise ValueError(f"step: expected 0 <= step < {self.num_steps}, got {step}")


def from_config(config: dict[str, Any], total_steps: int) -> Schedule:
    """The schedule named by ``train.schedule`` with the run's optimizer and crop settings."""
    o, tc = config["optim"], config["train"]
    args = (
        total_steps,
        base_lr(config),
        int(config["data"]["crop_size"]),
        int(o["warmup_steps"]),
        float(o["poly_power"]),
    )
    if tc["schedule"] == "fast2x":
        f = tc["fast2x"]
        try:
            return Schedule.fast2x(
                *args,
                low_res_fraction=float(f["low_res_fraction"]),
                low_res_scale=float(f["low_res_scale"]),
                full_res_lr=f["full_res_lr"],
                low_res_batch=int(f["low_res_batch"]),
                low_res_lr=f["low_res_lr"],
            )
        except ValueError as e:  # e.g. a budget too short for the settings: name the config key
            if str(e).split(":")[0] in f:
                raise ValueError(f"train.fast2x.{e}") from None
            raise
    return Schedule.standard(*args)


def rampup_factor(progress: float, rampup: float) -> float:
    """The unsupervised weight's factor when ``progress`` of the budget is done (a share in
    [0, 1]): exp(-5 (1 - t)^2) at t = progress / rampup (Laine and Aila's ramp-up, 0.0067 at the
    start), 1 from t = 1 on and without a ramp-up (``rampup`` 0)."""
    if rampup <= 0 or progress >= rampup:
        return 1.0
    return math.exp(-5.0 * (1.0 - progress / rampup) ** 2)
