"""A folder data set's labels are checked when it is built: a class outside [0, num_classes) that
is not the ignore value, a label of another size than its image, or an RGB label is named before
training; files that passed are remembered, so a data set is scanned once."""

import os

import numpy as np
import pytest
import yaml
from PIL import Image

from semiseg_fast.data import DataError, SegmentationFolder
from semiseg_fast.train import cli

from ..train.helpers import TINY


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _voc(root, labels):
    for name, label in labels.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(label).save(root / "SegmentationClass" / f"{name}.png")
    (root / "labeled.txt").write_text("\n".join(labels) + "\n")
    return SegmentationFolder(str(root), "labeled.txt")


def _label(value):
    a = np.zeros((16, 16), np.uint8)
    a[4:8, 4:8] = value
    a[0, 0] = 255  # the ignore value is always allowed
    return a


def test_a_class_outside_the_range_is_named(tmp_path):
    ds = _voc(tmp_path, {"good": _label(2), "bad": _label(7)})
    with pytest.raises(DataError, match=r"label '.*bad.png' holds class 7, outside \[0, 3\)"):
        ds.check_labels(3)
    ds.check_labels(8)


def test_size_and_colour_mistakes_are_named(tmp_path):
    ds = _voc(tmp_path / "size", {"small": np.zeros((8, 16), np.uint8)})
    with pytest.raises(DataError, match=r"label '.*small.png' is \(8, 16\) but image '.*small.jpg' is \(16, 16\)"):
        ds.check_labels(3)
    ds = _voc(tmp_path / "rgb", {"rgb": np.zeros((16, 16, 3), np.uint8)})
    with pytest.raises(DataError, match=r"label '.*rgb.png': expected a single-channel"):
        ds.check_labels(3)


def test_checked_files_are_not_read_again_until_they_change(tmp_path, monkeypatch):
    ds = _voc(tmp_path, {"a": _label(1), "b": _label(2)})
    ds.check_labels(3)
    reads = []
    real_open = SegmentationFolder._open
    monkeypatch.setattr(SegmentationFolder, "_open", staticmethod(lambda p, m: reads.append(p) or real_open(p, m)))
    ds.check_labels(3)
    assert reads == []
    Image.fromarray(_label(9)).save(tmp_path / "SegmentationClass" / "b.png")
    os.utime(tmp_path / "SegmentationClass" / "b.png", ns=(1, 1))  # another modification time
    with pytest.raises(DataError, match="b.png' holds class 9"):
        ds.check_labels(3)
    assert [os.path.basename(p) for p in reads] == ["b.png"]


def test_training_names_the_bad_label_before_it_starts(tmp_path):
    _voc(tmp_path / "voc", {"a": _label(1), "b": _label(7)})
    for split in ("unlabeled", "val"):
        (tmp_path / "voc" / f"{split}.txt").write_text("a\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    argv = ["--config", str(config), "method=supervised", "data.name=voc", f"data.root={tmp_path / 'voc'}",
            "data.num_classes=3", "data.crop_size=16", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"error: label '.*b.png' holds class 7"):
        cli.main(argv)
    assert not (tmp_path / "run" / "metrics.csv").exists()
