"""The TensorBoard log of a tiny run: its scalars match metrics.csv, the prediction grid is logged
at each evaluation, a resumed run's log does not repeat steps, and a missing package is a setup
error."""

import csv

import pytest
import yaml

from semiseg_fast.train import cli
from semiseg_fast.train import loop as train_loop
from semiseg_fast.train.tensorboard_log import TensorBoardLog

from .helpers import TINY

pytest.importorskip("tensorboard", reason="the tensorboard package is an optional extra")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

RUN = ["method=fixmatch", "train.epochs=1", "train.progress=false", "train.amp=off", "train.tensorboard=true"]


def _events(folder):
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def test_a_tiny_run_logs_scalars_and_prediction_grids(tiny_yaml, tmp_path):
    out = tmp_path / "run"
    cli.main(["--config", tiny_yaml, *RUN, f"out_dir={out}"])  # 9 steps, evaluated at 6 and 9
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    events = _events(out)
    assert {"loss/total", "loss/supervised", "pseudo_labels/mask_ratio", "optim/lr", "val/miou"} <= set(
        events.Tags()["scalars"]
    )
    loss = events.Scalars("loss/total")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    miou = events.Scalars("val/miou")
    evaluated = [r for r in rows if r["miou"]]
    assert [e.step for e in miou] == [int(r["step"]) for r in evaluated] == [6, 9]
    assert [e.value for e in miou] == pytest.approx([float(r["miou"]) for r in evaluated], rel=1e-6)
    for column, tag in (("pseudo_coverage", "coverage"), ("pseudo_miou", "miou")):  # threshold 0: accuracy too
        values = events.Scalars(f"pseudo_labels/{tag}")
        assert [e.step for e in values] == [6, 9]
        assert [e.value for e in values] == pytest.approx([float(r[column]) for r in evaluated], rel=1e-6)
    grids = events.Images("val/predictions")
    assert [e.step for e in grids] == [6, 9]
    # train.grid_images=2 images of 32x32, three columns: image | ground truth | prediction
    assert (grids[-1].height, grids[-1].width) == (64, 96)


def test_a_resumed_log_drops_the_steps_logged_after_the_checkpoint(tmp_path):
    first = TensorBoardLog(str(tmp_path))
    for step in (10, 20, 30):
        first.scalars({"loss": float(step)}, step)
    first.close()
    resumed = TensorBoardLog(str(tmp_path), start_step=20)  # the checkpoint was at step 20
    resumed.scalars({"loss": 31.0}, 30)
    resumed.close()
    assert [(e.step, e.value) for e in _events(tmp_path).Scalars("loss/total")] == [(10, 10.0), (20, 20.0), (30, 31.0)]


def test_tensorboard_without_the_package_is_a_setup_error(tiny_yaml, tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "tensorboard_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        cli.main(["--config", tiny_yaml, *RUN, f"out_dir={tmp_path / 'run'}"])
    assert "train.tensorboard=true needs the tensorboard package" in str(e.value.code)
    assert not (tmp_path / "run" / "metrics.csv").exists()
