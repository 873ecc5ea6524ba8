import math

import pytest

from semiseg_fast.train.config import load_config
from semiseg_fast.train.schedule import Schedule, from_config, rampup_factor
from semiseg_fast.train.start import base_lr


def test_standard_is_warmup_then_poly_at_full_crop():
    s = Schedule.standard(total_steps=100, lr=0.01, crop_size=56, warmup_steps=10)
    assert [s.lr(i) for i in (0, 4, 9)] == pytest.approx([0.001, 0.005, 0.01])
    assert s.lr(10) == pytest.approx(0.01 * 0.9**0.9)
    assert s.lr(99) == pytest.approx(0.01 * 0.01**0.9)
    assert {s.crop_size(i) for i in range(100)} == {56}
    assert s.phases() == [dict(start=0, stop=100, crop=56, batch_scale=1)] and s.relative_pixels() == 1.0


def test_fast2x_phases():
    s = Schedule.fast2x(
        total_steps=100,
        lr=0.01,
        crop_size=56,
        warmup_steps=10,
        low_res_fraction=0.75,
        low_res_scale=0.5,
        low_res_batch=1,
        full_res_lr=None,
        low_res_lr=None,
    )
    assert s.low_res_crop == 28
    assert [s.crop_size(i) for i in (0, 9, 74)] == [28, 28, 28] and [s.crop_size(i) for i in (75, 99)] == [56, 56]
    assert s.phases() == [
        dict(start=0, stop=75, crop=28, batch_scale=1),
        dict(start=75, stop=100, crop=56, batch_scale=1),
    ]
    assert s.relative_pixels() == pytest.approx((75 * 28**2 + 25 * 56**2) / (100 * 56**2))
    standard = Schedule.standard(100, 0.01, 56, 10)
    assert all(s.lr(i) == standard.lr(i) for i in range(100))  # neither held nor restarted: the same curve
    assert Schedule.fast2x(10, 0.1, 512, low_res_scale=0.5).low_res_crop == 256


def test_fast2x_defaults():
    s = Schedule.fast2x(total_steps=100, lr=0.01, crop_size=56)
    assert (s.low_res_fraction, s.low_res_scale, s.low_res_batch, s.low_res_lr, s.full_res_lr) == (
        0.8,
        0.6,
        2,
        0.5,
        1.0,
    )
    assert s.low_res_crop == 32 and s.low_res_steps == 40 and s.num_steps == 60
    assert s.lr(0) == s.lr(39) == 0.005 and s.lr(40) == 0.01
    cfg = load_config(None, ["train.schedule=fast2x"])
    assert from_config(cfg, 100) == Schedule.fast2x(
        100, base_lr(cfg), cfg["data"]["crop_size"], cfg["optim"]["warmup_steps"], cfg["optim"]["poly_power"]
    )


def test_fast2x_full_resolution_restart():
    s = Schedule.fast2x(
        total_steps=100,
        lr=0.01,
        crop_size=56,
        warmup_steps=10,
        low_res_fraction=0.75,
        low_res_batch=1,
        full_res_lr=0.5,
        low_res_lr=None,
    )
    plain = Schedule.fast2x(
        total_steps=100,
        lr=0.01,
        crop_size=56,
        warmup_steps=10,
        low_res_fraction=0.75,
        low_res_batch=1,
        full_res_lr=None,
        low_res_lr=None,
    )
    assert all(s.lr(i) == plain.lr(i) for i in range(75))  # the reduced phase keeps the run's curve
    assert s.lr(75) == pytest.approx(0.005)  # restarts at 0.5 * lr ...
    assert s.lr(80) == pytest.approx(0.005 * 0.8**0.9)  # ... and decays over the 25 full-size steps
    assert s.lr(99) == pytest.approx(0.005 * 0.04**0.9)
    cfg = load_config(None, ["train.schedule=fast2x", "train.fast2x.full_res_lr=0.5"])
    assert from_config(cfg, 100).lr(40) == pytest.approx(0.5 * base_lr(cfg))
    with pytest.raises(ValueError, match="full_res_lr: expected <= 1.0"):
        Schedule.fast2x(10, 0.1, 32, full_res_lr=2.0)
    with pytest.raises(ValueError, match="train.fast2x.full_res_lr expected null or a factor"):
        load_config(None, ["train.fast2x.full_res_lr=0"])


def test_fast2x_reduced_phase_holds_its_rate():
    s = Schedule.fast2x(
        total_steps=100,
        lr=0.01,
        crop_size=56,
        warmup_steps=10,
        low_res_fraction=0.6,
        low_res_batch=2,
        low_res_lr=1.5,
        full_res_lr=0.5,
    )
    # the warm-up ramps over 10 batches (5 double steps) to 1.5 * lr, which the reduced phase holds
    assert [s.lr(i) for i in range(6)] == pytest.approx([0.0015, 0.0045, 0.0075, 0.0105, 0.0135, 0.015])
    assert [s.lr(i) for i in range(5, 30)] == pytest.approx([0.015] * 25)
    assert s.lr(30) == pytest.approx(0.005) and s.lr(69) == pytest.approx(0.005 * (1 / 40) ** 0.9)  # then the decay
    # a warm-up longer than the reduced phase ramps on to the full-size phase's restarted rate
    late = Schedule.fast2x(
        100, 0.01, 56, warmup_steps=50, low_res_fraction=0.2, low_res_batch=2, low_res_lr=2.0, full_res_lr=0.5
    )
    assert late.lr(9) == pytest.approx(0.02 * 19 / 50) and late.lr(10) == pytest.approx(0.005 * 21 / 50)
    assert late.lr(39) == pytest.approx(0.005) and late.lr(40) == pytest.approx(0.005 * (1 - 30 / 80) ** 0.9)
    # with no full-size phase to decay in, the reduced phase decays from its held rate
    only = Schedule.fast2x(100, 0.01, 56, warmup_steps=10, low_res_fraction=1.0, low_res_batch=2, low_res_lr=0.5)
    assert only.num_steps == 50 and only.lr(49) == pytest.approx(0.005 * 0.02**0.9)
    # nothing reduced: nothing held
    none = Schedule.fast2x(100, 0.01, 56, warmup_steps=10, low_res_fraction=0.0, low_res_lr=0.5)
    standard = Schedule.standard(100, 0.01, 56, warmup_steps=10)
    assert [none.lr(i) for i in range(100)] == [standard.lr(i) for i in range(100)]
    cfg = load_config(None, ["train.schedule=fast2x"])
    assert from_config(cfg, 100).lr(39) == pytest.approx(0.5 * base_lr(cfg))  # the default hold
    assert (
        from_config(load_config(None, ["train.schedule=fast2x", "train.fast2x.low_res_lr=null"]), 100).low_res_lr
        is None
    )
    with pytest.raises(ValueError, match="low_res_lr: expected > 0.0"):
        Schedule.fast2x(10, 0.1, 32, low_res_lr=0.0)
    with pytest.raises(ValueError, match="low_res_lr: expected a finite number"):
        Schedule.fast2x(10, 0.1, 32, low_res_lr=float("inf"))
    with pytest.raises(ValueError, match="train.fast2x.low_res_lr expected null or a positive factor"):
        load_config(None, ["train.fast2x.low_res_lr=-1"])


def test_fast2x_larger_batches_in_the_reduced_phase():
    s = Schedule.fast2x(
        total_steps=100,
        lr=0.01,
        crop_size=56,
        warmup_steps=10,
        low_res_fraction=0.6,
        low_res_scale=0.5,
        low_res_batch=2,
        full_res_lr=None,
        low_res_lr=None,
    )
    assert s.low_res_steps == 30 and s.num_steps == 70  # 60 budget steps in 30 double steps, then 40 full ones
    assert [s.batch_scale(i) for i in (0, 29, 30, 69)] == [2, 2, 1, 1]
    assert [s.progress(i) for i in (0, 1, 29, 30, 31, 69)] == [0, 2, 58, 60, 61, 99]
    assert [s.crop_size(i) for i in (29, 30)] == [28, 56]
    standard = Schedule.standard(100, 0.01, 56, 10)
    assert all(s.lr(i) == standard.lr(s.progress(i)) for i in range(70))  # the curve over images seen
    assert s.relative_pixels() == pytest.approx((60 * 28**2 + 40 * 56**2) / (100 * 56**2))
    assert s.phases() == [
        dict(start=0, stop=30, crop=28, batch_scale=2),
        dict(start=30, stop=70, crop=56, batch_scale=1),
    ]
    restart = Schedule.fast2x(
        100, 0.01, 56, 10, low_res_fraction=0.6, low_res_batch=2, full_res_lr=0.5, low_res_lr=None
    )
    assert restart.lr(30) == pytest.approx(0.005) and restart.lr(50) == pytest.approx(0.005 * 0.5**0.9)
    # the reduced phase never takes more than the budget, however it rounds
    odd = Schedule.fast2x(total_steps=7, lr=0.1, crop_size=32, low_res_fraction=1.0, low_res_batch=4)
    assert odd.low_res_steps == 1 and odd.num_steps == 4 and odd.progress(3) == 6
    with pytest.raises(ValueError, match="step: expected 0 <= step < 70, got 70"):
        s.lr(70)
    with pytest.raises(ValueError, match="low_res_batch: expected a positive integer"):
        Schedule.fast2x(10, 0.1, 32, low_res_batch=0)
    with pytest.raises(ValueError, match="train.fast2x.low_res_batch expected"):
        load_config(None, ["train.fast2x.low_res_batch=0"])
    assert (
        from_config(load_config(None, ["train.schedule=fast2x", "train.fast2x.low_res_batch=3"]), 90).low_res_batch == 3
    )


@pytest.mark.parametrize("total", [1, 2, 7, 18, 100, 1408])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8, 0.85, 1.0])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_fast2x_steps_use_the_whole_budget_once(total, fraction, k):
    try:
        s = Schedule.fast2x(total, 0.01, 56, warmup_steps=5, low_res_fraction=fraction, low_res_batch=k)
    except ValueError as e:  # only when the reduced phase rounds to nothing
        assert "rounds to no reduced step" in str(e) and fraction > 0
        assert round(fraction * total / k) == 0 or total < k
        return
    scales = [s.batch_scale(i) for i in range(s.num_steps)]
    assert sum(scales) == total
    # the reduced phase holds the nearest multiple of k batches to its share, unless that overshoots the budget
    assert abs(s.low_res_steps * k - fraction * total) <= k / 2 + 1e-9 or s.low_res_steps == total // k
    assert all(s.progress(i + 1) == s.progress(i) + scales[i] for i in range(s.num_steps - 1))
    assert all(0 < s.lr(i) <= 0.01 for i in range(s.num_steps - 1))


def test_warmup_counts_batches_across_larger_steps():
    s = Schedule.fast2x(
        100,
        0.01,
        56,
        warmup_steps=10,
        low_res_fraction=0.08,
        low_res_scale=0.5,
        low_res_batch=2,
        full_res_lr=None,
        low_res_lr=None,
    )
    # 4 double steps cover batches 0-7, then single steps 8, 9 (still warming up), 10, ...
    assert [s.lr(i) for i in range(7)] == pytest.approx([0.001, 0.003, 0.005, 0.007, 0.009, 0.01, 0.01 * 0.9**0.9])


def test_schedule_errors():
    s = Schedule.standard(10, 0.1, 32)
    with pytest.raises(ValueError, match=r"step: expected 0 <= step < 10, got 10"):
        s.lr(10)
    with pytest.raises(ValueError, match="low_res_scale: expected <= 1.0"):
        Schedule.fast2x(10, 0.1, 32, low_res_scale=2.0)
    with pytest.raises(ValueError, match="total_steps: expected a positive integer"):
        Schedule.standard(0, 0.1, 32)
    with pytest.raises(ValueError, match="low_res_fraction: 0.1 of a budget of 10 steps in steps of 4 batches rounds"):
        Schedule.fast2x(10, 0.1, 32, low_res_fraction=0.1, low_res_batch=4)
    with pytest.raises(ValueError, match="^train.fast2x.low_res_fraction: 0.8 of a budget of 1 steps"):
        from_config(load_config(None, ["train.schedule=fast2x"]), 1)
    with pytest.raises(ValueError, match="train.schedule expected standard | fast2x"):
        load_config(None, ["train.schedule=fast3x"])


def test_from_config():
    cfg = load_config(
        None,
        [
            "train.schedule=fast2x",
            "train.fast2x.low_res_fraction=0.5",
            "data.crop_size=64",
            "train.fast2x.low_res_scale=0.5",
            "train.fast2x.low_res_batch=1",
        ],
    )
    s = from_config(cfg, 200)
    assert s.low_res_steps == 100 and s.low_res_crop == 32 and s.full_crop == 64
    assert s.base_lr == base_lr(cfg) and s.warmup_steps == cfg["optim"]["warmup_steps"]


def test_rampup_rises_from_near_zero_to_one_over_its_share_of_the_budget():
    assert rampup_factor(0.0, 0.0) == rampup_factor(0.3, 0.0) == 1.0  # no ramp-up: full weight
    values = [rampup_factor(p / 100, 0.4) for p in range(0, 101)]
    assert values[0] == pytest.approx(math.exp(-5.0)) and values[20] == pytest.approx(math.exp(-5.0 / 4))
    assert all(a < b for a, b in zip(values[:40], values[1:41])) and set(values[40:]) == {1.0}
