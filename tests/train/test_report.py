import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg_fast.metrics import confusion_matrix, iou_from_confusion, pixel_accuracy
from semiseg_fast.train.figures import palette, prediction_grid_array, save_bars, save_curves, save_prediction_grid
from semiseg_fast.train.metrics_csv import MetricsCSV, read_csv
from semiseg_fast.train.progress import ProgressBar


def test_confusion_matrix_counts_and_ignores():
    target = torch.tensor([[0, 1, 2, 255], [1, 1, 0, 2]], dtype=torch.uint8)
    pred = torch.tensor([[0, 2, 2, 1], [1, 0, 0, 2]])
    cm = confusion_matrix(pred, target, 3)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(cm, expected)
    miou, per_class = iou_from_confusion(cm)
    assert per_class[0] == pytest.approx(2 / 3) and per_class[1] == pytest.approx(1 / 3)
    assert miou == pytest.approx(float(per_class.mean()))
    assert pixel_accuracy(cm) == pytest.approx(5 / 7)


def test_absent_class_is_nan_and_left_out():
    cm = confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3)
    miou, per_class = iou_from_confusion(cm)
    assert per_class[0] == 1.0 and math.isnan(per_class[1]) and miou == 1.0


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(torch.zeros(2), torch.zeros(2, dtype=torch.long), 2)


def test_progress_bar_on_a_pipe():
    stream = io.StringIO()
    bar = ProgressBar(4, desc="fixmatch", stream=stream, log_interval=0.0)
    bar.set_metrics(loss=0.5, mask=0.25)
    for _ in range(4):
        bar.update(1, images=16)
    bar.write("step 4: mIoU 10.00")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert (
        lines[-2].startswith("fixmatch 4/4 loss=0.5000 mask=0.2500")
        and "img/s" in lines[-2]
        and "eta 0:00" in lines[-2]
    )
    assert lines[-1] == "step 4: mIoU 10.00" and "\r" not in stream.getvalue()
    quiet = io.StringIO()
    off = ProgressBar(4, stream=quiet, enabled=False)
    off.update(4)
    off.write("x")
    assert quiet.getvalue() == ""


def test_metrics_csv_resume(tmp_path):
    path = str(tmp_path / "m.csv")
    csv = MetricsCSV(path, ["step", "loss", "miou"])
    for step in (10, 20, 30):
        csv.write({"step": step, "loss": 1.0 / step, "miou": "" if step != 20 else 0.5})
    MetricsCSV(path, ["step", "loss", "miou"]).truncate_after(20)
    rows = read_csv(path)
    assert [r["step"] for r in rows] == [10.0, 20.0] and rows[1]["miou"] == 0.5 and math.isnan(rows[0]["miou"])
    with pytest.raises(ValueError, match="columns"):
        MetricsCSV(path, ["step"])
    with pytest.raises(KeyError, match="unknown columns"):
        csv.write({"step": 1, "acc": 2})


def test_metrics_csv_of_an_older_run_gains_the_new_columns_empty(tmp_path):
    path = str(tmp_path / "m.csv")
    MetricsCSV(path, ["step", "miou"]).write({"step": 10, "miou": 0.5})
    grown = MetricsCSV(path, ["step", "miou", "pseudo_miou"])
    grown.write({"step": 20, "miou": 0.6, "pseudo_miou": 0.4})
    assert open(path).read().splitlines() == ["step,miou,pseudo_miou", "10,0.5,", "20,0.6,0.4"]
    with pytest.raises(ValueError, match="columns"):
        MetricsCSV(path, ["step", "pseudo_miou"])  # not an older layout of these columns


def test_palette_is_the_voc_colour_map():
    assert palette(5).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_is_tqdm():
    stream = _Terminal()
    bar = ProgressBar(4, desc="fixmatch", stream=stream)
    assert bar.bar is not None
    bar.set_metrics(loss=0.5, mask=0.25)
    for _ in range(4):
        bar.update(1, images=16)
    bar.write("step 4: mIoU 10.00")
    bar.close()
    text = stream.getvalue()
    assert "fixmatch" in text and "4/4" in text and "loss=0.5000" in text and "img/s=" in text
    assert "\r" in text and "step 4: mIoU 10.00\n" in text


def test_pngs(tmp_path):
    images = torch.randint(0, 256, (2, 3, 8, 10), dtype=torch.uint8)
    labels = torch.randint(0, 3, (2, 8, 10))
    labels[0, 0, 0] = 255
    grid = prediction_grid_array(images, labels, labels, num_classes=3)
    assert grid.shape == (16, 30, 3) and grid.dtype == np.uint8
    assert (grid[:8, :10] == images[0].permute(1, 2, 0).numpy()).all()
    assert grid[0, 10].tolist() == [255, 255, 255]  # the ignored pixel, in the ground truth column
    assert grid[8:, 20:].reshape(-1, 3).tolist() == palette(3)[labels[1].flatten()].tolist()
    save_prediction_grid(str(tmp_path / "grid.png"), images, labels, labels, num_classes=3)
    save_curves(
        str(tmp_path / "curves.png"),
        [{"step": 1.0, "loss": 2.0, "miou": float("nan")}, {"step": 2.0, "loss": 1.0, "miou": 0.3}],
    )
    save_curves(str(tmp_path / "empty.png"), [])
    panel = {"title": "t", "groups": ["a", "b"], "series": ["x", "y"], "values": {("a", "x"): 1.0, ("b", "y"): None}}
    save_bars(str(tmp_path / "bars.png"), [panel, panel])
    for name in ("grid.png", "curves.png", "empty.png", "bars.png"):
        image = np.array(Image.open(tmp_path / name).convert("RGB"))
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, name  # drawn, not blank
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp-")]
