import pytest

from semiseg_fast.train.config import load_config
from semiseg_fast.train.schedule import Schedule, from_config


def test_standard_is_warmup_then_poly_at_full_crop():
    s = Schedule.standard(total_steps=100, lr=0.01, crop_size=56, warmup_steps=10)
    assert [s.lr(i) for i in (0, 4, 9)] == pytest.approx([0.001, 0.005, 0.01])
    assert s.lr(10) == pytest.approx(0.01 * 0.9 ** 0.9)
    assert s.lr(99) == pytest.approx(0.01 * 0.01 ** 0.9)
    assert {s.crop_size(i) for i in range(100)} == {56}
    assert s.phases() == [dict(start=0, stop=100, crop=56)] and s.relative_pixels() == 1.0


def test_fast2x_phases():
    s = Schedule.fast2x(total_steps=100, lr=0.01, crop_size=56, warmup_steps=10, low_res_fraction=0.75)
    assert s.low_res_crop == 28
    assert [s.crop_size(i) for i in (0, 9, 74)] == [28, 28, 28] and [s.crop_size(i) for i in (75, 99)] == [56, 56]
    assert s.phases() == [dict(start=0, stop=75, crop=28), dict(start=75, stop=100, crop=56)]
    assert s.relative_pixels() == pytest.approx((75 * 28 ** 2 + 25 * 56 ** 2) / (100 * 56 ** 2))
    assert Schedule.fast2x(100, 0.01, 60).low_res_crop == 32 and Schedule.fast2x(100, 0.01, 60).low_res_steps == 85
    standard = Schedule.standard(100, 0.01, 56, 10)
    assert all(s.lr(i) == standard.lr(i) for i in range(100))  # same learning-rate curve
    assert Schedule.fast2x(10, 0.1, 512).low_res_crop == 256


def test_fast2x_full_resolution_restart():
    s = Schedule.fast2x(total_steps=100, lr=0.01, crop_size=56, warmup_steps=10, low_res_fraction=0.75,
                        full_res_lr=0.5)
    plain = Schedule.fast2x(total_steps=100, lr=0.01, crop_size=56, warmup_steps=10, low_res_fraction=0.75)
    assert all(s.lr(i) == plain.lr(i) for i in range(75))  # the reduced phase keeps the run's curve
    assert s.lr(75) == pytest.approx(0.005)  # restarts at 0.5 * lr ...
    assert s.lr(80) == pytest.approx(0.005 * 0.8 ** 0.9)  # ... and decays over the 25 full-size steps
    assert s.lr(99) == pytest.approx(0.005 * 0.04 ** 0.9)
    cfg = load_config(None, ["train.schedule=fast2x", "train.fast2x.full_res_lr=0.5"])
    assert from_config(cfg, 100).lr(85) == pytest.approx(0.5 * cfg["optim"]["lr"])
    with pytest.raises(ValueError, match="full_res_lr: expected <= 1.0"):
        Schedule.fast2x(10, 0.1, 32, full_res_lr=2.0)
    with pytest.raises(ValueError, match="train.fast2x.full_res_lr expected null or a factor"):
        load_config(None, ["train.fast2x.full_res_lr=0"])


def test_schedule_errors():
    s = Schedule.standard(10, 0.1, 32)
    with pytest.raises(ValueError, match=r"step: expected 0 <= step < 10, got 10"):
        s.lr(10)
    with pytest.raises(ValueError, match="low_res_scale: expected <= 1.0"):
        Schedule.fast2x(10, 0.1, 32, low_res_scale=2.0)
    with pytest.raises(ValueError, match="total_steps: expected a positive integer"):
        Schedule.standard(0, 0.1, 32)
    with pytest.raises(ValueError, match="train.schedule expected standard | fast2x"):
        load_config(None, ["train.schedule=fast3x"])


def test_from_config():
    cfg = load_config(None, ["train.schedule=fast2x", "train.fast2x.low_res_fraction=0.5", "data.crop_size=64"])
    s = from_config(cfg, 200)
    assert s.low_res_steps == 100 and s.low_res_crop == 32 and s.full_crop == 64
    assert s.base_lr == cfg["optim"]["lr"] and s.warmup_steps == cfg["optim"]["warmup_steps"]
