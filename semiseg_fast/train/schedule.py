"""Training schedules: the learning rate and the crop size of every iteration.

``standard``: linear warm-up, then poly decay, at the full crop size throughout.

``fast2x`` (the fast schedule of Zhu et al. 2020, as this project defines it, since the paper's
details are not public): the same learning-rate curve, but the first ``low_res_fraction`` of the
iterations (warm-up included) train on crops ``low_res_scale`` times the full side (rounded to a
multiple of 4), and only the last, shorter phase at full resolution. A step on a crop of half the
side has a quarter of the pixels; with the defaults (85% of the steps at half side) the run
trains on 36% of the standard schedule's pixels. Per-step costs that do not scale with pixels
(optimizer, data loading) make the wall-clock gain smaller than that. With ``full_res_lr`` the
full-resolution phase is a fine-tuning phase of its own: its learning rate restarts at
``full_res_lr * lr`` and decays (poly) to 0 over that phase, instead of continuing the run's curve.

Use it from any loop::

    sched = Schedule.fast2x(total_steps=10_000, lr=0.01, crop_size=512)
    for step in range(sched.total_steps):
        lr, crop = sched.lr(step), sched.crop_size(step)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .. import _checks

KINDS = ("standard", "fast2x")


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    base_lr: float
    full_crop: int
    warmup_steps: int = 0
    poly_power: float = 0.9
    low_res_fraction: float = 0.0  # share of the steps at the reduced crop (0: standard)
    low_res_scale: float = 1.0     # reduced crop side / full crop side
    full_res_lr: Optional[float] = None  # restart factor of the full-resolution phase (None: no restart)

    def __post_init__(self):
        for name in ("total_steps", "full_crop"):
            if _checks.integer(getattr(self, name), name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if _checks.integer(self.warmup_steps, "warmup_steps") < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        _checks.number(self.base_lr, "base_lr", low=0.0, low_open=True)
        _checks.number(self.poly_power, "poly_power", low=0.0)
        _checks.number(self.low_res_fraction, "low_res_fraction", low=0.0, high=1.0)
        _checks.number(self.low_res_scale, "low_res_scale", low=0.0, high=1.0, low_open=True)
        if self.full_res_lr is not None:
            _checks.number(self.full_res_lr, "full_res_lr", low=0.0, high=1.0, low_open=True)

    @classmethod
    def standard(cls, total_steps: int, lr: float, crop_size: int, warmup_steps: int = 0,
                 poly_power: float = 0.9) -> "Schedule":
        return cls(total_steps, lr, crop_size, warmup_steps, poly_power)

    @classmethod
    def fast2x(cls, total_steps: int, lr: float, crop_size: int, warmup_steps: int = 0, poly_power: float = 0.9,
               low_res_fraction: float = 0.85, low_res_scale: float = 0.5,
               full_res_lr: Optional[float] = None) -> "Schedule":
        return cls(total_steps, lr, crop_size, warmup_steps, poly_power, low_res_fraction, low_res_scale, full_res_lr)

    @property
    def low_res_steps(self) -> int:
        return int(round(self.low_res_fraction * self.total_steps))

    @property
    def low_res_crop(self) -> int:
        return max(8, min(self.full_crop, int(round(self.full_crop * self.low_res_scale / 4)) * 4))

    def lr(self, step: int) -> float:
        """Linear warm-up to ``base_lr``, then ``base_lr * (1 - step / total) ** poly_power``; with
        ``full_res_lr``, the full-resolution phase restarts at ``full_res_lr * base_lr`` instead."""
        self._check_step(step)
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        low = self.low_res_steps
        if self.full_res_lr is not None and 0 < low <= step:
            return self.base_lr * self.full_res_lr * (1.0 - (step - low) / (self.total_steps - low)) ** self.poly_power
        return self.base_lr * (1.0 - step / self.total_steps) ** self.poly_power

    def crop_size(self, step: int) -> int:
        self._check_step(step)
        return self.low_res_crop if step < self.low_res_steps else self.full_crop

    def phases(self) -> List[Dict[str, Any]]:
        """The phases as (first step, last step + 1, crop size), for logs and docs."""
        out = []
        if self.low_res_steps:
            out.append(dict(start=0, stop=self.low_res_steps, crop=self.low_res_crop))
        if self.low_res_steps < self.total_steps:
            out.append(dict(start=self.low_res_steps, stop=self.total_steps, crop=self.full_crop))
        return out

    def relative_pixels(self) -> float:
        """Pixels trained on, relative to the standard schedule (a proxy for compute)."""
        low = self.low_res_steps * self.low_res_crop ** 2
        return (low + (self.total_steps - self.low_res_steps) * self.full_crop ** 2) / (
            self.total_steps * self.full_crop ** 2)

    def _check_step(self, step: int) -> None:
        if _checks.integer(step, "step") < 0 or step >= self.total_steps:
            raise ValueError(f"step: expected 0 <= step < {self.total_steps}, got {step}")


def from_config(config: Dict[str, Any], total_steps: int) -> Schedule:
    """The schedule named by ``train.schedule`` with the run's optimizer and crop settings."""
    o, tc = config["optim"], config["train"]
    args = (total_steps, float(o["lr"]), int(config["data"]["crop_size"]), int(o["warmup_steps"]), float(o["poly_power"]))
    if tc["schedule"] == "fast2x":
        f = tc["fast2x"]
        return Schedule.fast2x(*args, low_res_fraction=float(f["low_res_fraction"]),
                               low_res_scale=float(f["low_res_scale"]), full_res_lr=f["full_res_lr"])
    return Schedule.standard(*args)
