"""Pseudo-label quality: each method's hook keeps the pixels its own step would train on (on
hand-made teacher outputs with known coverage, accuracy and mIoU), a run logs the three columns at
its evaluations and draws them, supervised runs and folders without ground truth log none."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import semiseg_fast as sf
from semiseg_fast.data import SegmentationFolder, SyntheticScenes
from semiseg_fast.data.subset import Subset
from semiseg_fast.train import cli, methods
from semiseg_fast.train.config import default_config
from semiseg_fast.train.data import RunData
from semiseg_fast.train.figures import curves_figure
from semiseg_fast.train.pseudo_quality import COLUMNS, TruthSample, has_pseudo_labels, measure, truth_sample

from .helpers import TINY


class FixedTeacher(nn.Module):
    """Returns the same output for any batch: the teacher output a test hands to a method."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x):
        return self.output


def _method(name, num_classes, **settings):
    config = default_config()
    config["method"] = name
    config["semi"].get(name, {}).update(settings)
    return methods.get(name)(config, num_classes)


def _measure(method, output, truth, epoch=0):
    """Quality of ``method``'s pseudo-labels from the teacher ``output`` against ``truth`` (N, H, W)."""
    images = torch.zeros(truth.shape[0], 3, *truth.shape[1:], dtype=torch.uint8)
    sample = TruthSample(list(zip(images, truth.to(torch.uint8))), list(range(truth.shape[0])))
    return measure(method, FixedTeacher(output), sample, epoch, method.num_classes, torch.device("cpu"), 64)


def _logits(probabilities):
    """(1, C, 1, P) logits of per-pixel probability rows (P, C)."""
    return torch.tensor(probabilities).log().T[None, :, None, :].contiguous()


def test_fixmatch_keeps_the_pixels_at_its_threshold():
    logits = _logits(
        [
            [0.95, 0.03, 0.02],  # kept, right
            [0.05, 0.92, 0.03],  # kept, wrong (truth 2)
            [0.50, 0.30, 0.20],  # under the threshold
            [0.10, 0.10, 0.80],  # under the threshold
            [0.97, 0.02, 0.01],  # kept, but its truth is ignored
            [0.05, 0.89, 0.06],  # just under the threshold
        ]
    )
    truth = torch.tensor([[[0, 2, 0, 2, 255, 1]]])
    fixmatch = _method("fixmatch", 3, threshold=0.9)
    quality = _measure(fixmatch, logits, truth)
    assert quality.coverage == pytest.approx(2 / 5) and quality.accuracy == pytest.approx(1 / 2)
    # unfiltered labels 0 1 0 2 . 1: IoU 1, 1/2, 1/2
    assert quality.miou == pytest.approx(2 / 3)
    _, keep = fixmatch.pseudo_labels(FixedTeacher(logits), torch.zeros(1, 3, 1, 6), [0], 0)
    _, ratio = sf.fixmatch_loss(torch.zeros_like(logits), logits, 0.9, return_mask_ratio=True)
    assert float(ratio) == pytest.approx(keep.float().mean().item())  # the loss's own mask
    none_kept = _measure(_method("fixmatch", 3, threshold=1.0), logits, truth)
    assert none_kept.coverage == 0 and math.isnan(none_kept.accuracy) and none_kept.row()["pseudo_accuracy"] == ""


def test_u2pl_keeps_nothing_before_its_unsupervised_epochs_then_the_low_entropy_pixels():
    # entropy grows with the pixel: logits (10 - k, 0, 0, 0)
    logits = torch.zeros(1, 4, 1, 10)
    logits[0, 0, 0] = 10.0 - torch.arange(10.0)
    truth = torch.zeros(1, 1, 10, dtype=torch.long)
    truth[0, 0, 0] = 1  # the most confident pixel is wrong
    u2pl = _method("u2pl", 4, drop_percent=80.0, sup_only_epochs=1)
    u2pl.run_config["train"]["epochs"] = 2
    u2pl.criterion.epochs = 2
    early = _measure(u2pl, logits, truth, epoch=0)
    assert early.coverage == 0 and math.isnan(early.accuracy)
    # epoch 1 of 2: the 90th percentile of ten entropies lies between the two highest: one dropped
    later = _measure(u2pl, logits, truth, epoch=1)
    assert later.coverage == pytest.approx(9 / 10) and later.accuracy == pytest.approx(8 / 9)
    assert later.miou == pytest.approx(0.9 / 2)  # class 0: 9 of 10, class 1: 0


def test_pseudoseg_keeps_the_fused_targets_over_its_threshold():
    pred = torch.tensor([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T[None, :, None, :].contiguous()
    output = {"pred": pred, "sgc": pred.clone()}
    truth = torch.tensor([[[255, 0, 0]]])  # the uniform pixel's label is a tie: its truth is ignored
    strict = _method("pseudoseg", 3, threshold=0.6)
    quality = _measure(strict, output, truth)
    assert quality.coverage == pytest.approx(1 / 2) and quality.accuracy == 1.0  # [0, 1, 0] fuses to ~0.51
    _, keep = strict.pseudo_labels(FixedTeacher(output), torch.zeros(1, 3, 1, 3), [0], 0)
    ps = strict.settings
    _, ratio = sf.pseudoseg_consistency_loss(
        torch.zeros_like(pred),
        pred,
        pred,
        threshold=0.6,
        gamma=ps["gamma"],
        temperature=ps["temperature"],
        return_mask_ratio=True,
    )
    assert float(ratio) == pytest.approx(keep.float().mean().item())  # the loss's own mask
    assert _measure(_method("pseudoseg", 3, threshold=0.0), output, truth).coverage == 1.0


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_selftrain_measures_its_stored_labels_under_its_threshold(tmp_path):
    unlabeled = Subset(SyntheticScenes(3, (8, 8), seed=0), [0, 1])
    label = np.zeros((8, 8), np.uint8)
    label[0, :4] = 1
    confidence = np.full((8, 8), 255, np.uint8)
    confidence[1] = 64  # 0.25: under the threshold
    _png(tmp_path / "labels" / "scene000000.png", label)
    _png(tmp_path / "confidence" / "scene000000.png", confidence)
    manifest = {"format": 1, "topk": 0, "split_size": 2, "num_classes": 3, "items": [{"index": 0, "id": "scene000000"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    selftrain = _method("selftrain", 3, pseudo_dir=str(tmp_path), threshold=0.5)
    selftrain.unlabeled_view(RunData(unlabeled, unlabeled, unlabeled, 3, ["a", "b", "c"]))
    truth = torch.zeros(2, 8, 8, dtype=torch.long)
    truth[0, 0, :2] = 1
    truth[0, 7] = 255
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    sample = TruthSample(list(zip(images, truth.to(torch.uint8))), [0, 1])  # image 1 has no stored label
    quality = measure(selftrain, nn.Identity(), sample, 0, 3, torch.device("cpu"), 4)
    assert quality.coverage == pytest.approx(48 / 120) and quality.accuracy == pytest.approx(46 / 48)
    assert quality.miou == pytest.approx((2 / 4 + 52 / 54) / 2)  # image 0 only: image 1 has no label


def test_supervised_has_no_pseudo_labels_and_the_others_have():
    supervised = _method("supervised", 3)
    assert not has_pseudo_labels(supervised)
    assert supervised.pseudo_labels(nn.Identity(), torch.zeros(1, 3, 4, 4), [0], 0) is None
    assert all(has_pseudo_labels(_method(n, 4)) for n in ("fixmatch", "u2pl", "pseudoseg", "selftrain"))


def _voc(root, names, labelled):
    for name in names:
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        if name in labelled:
            _png(root / "SegmentationClass" / f"{name}.png", np.full((16, 16), 1, np.uint8))


def test_a_folder_samples_the_unlabeled_split_with_labels_only_if_every_file_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _voc(tmp_path, "abcd", "abc")
    (tmp_path / "unlabeled.txt").write_text("a\nb\nc\nd\n")
    unlabeled = SegmentationFolder(str(tmp_path), "unlabeled.txt", labels=False)
    sample = truth_sample(unlabeled, 2, num_classes=3)  # images 0 and 2
    assert sample.indices == [0, 2] and [int(label[0, 0]) for _, label in sample.images] == [1, 1]
    with pytest.raises(FileNotFoundError, match=r"1 of 4 label files are missing.*d\.png"):
        truth_sample(unlabeled, 10, num_classes=3)


@pytest.mark.parametrize("unlabeled", ["b", "b c"])
def test_a_folder_run_measures_where_every_sampled_image_has_a_label_and_says_once_where_not(
    tmp_path, monkeypatch, capsys, unlabeled
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "voc"
    _voc(root, "abc", "ab")
    for split, names in (("labeled", "a"), ("unlabeled", unlabeled), ("val", "a")):
        (root / f"{split}.txt").write_text("\n".join(names.split()) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    cli.main(["--config", str(config), "method=fixmatch", "data.name=voc", f"data.root={root}", "data.num_classes=3",
              "data.crop_size=16", "train.epochs=1", "train.progress=false", f"out_dir={out}"])  # fmt: skip
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    said = capsys.readouterr().err.count("pseudo-label quality: not measured")
    if unlabeled == "b":
        assert said == 0 and rows[-1]["pseudo_miou"] != "" and float(rows[-1]["pseudo_coverage"]) == 1.0
    else:
        assert said == 1 and [rows[-1][c] for c in COLUMNS] == ["", "", ""]


def test_curves_draw_the_pseudo_label_columns_when_a_run_has_them():
    nan = float("nan")
    rows = [
        {"step": 5.0, "loss": 2.0, "miou": nan, "pseudo_coverage": nan, "pseudo_accuracy": nan, "pseudo_miou": nan},
        {"step": 10.0, "loss": 1.0, "miou": 0.3, "pseudo_coverage": 0.5, "pseudo_accuracy": 0.8, "pseudo_miou": 0.4},
        {"step": 20.0, "loss": 0.5, "miou": 0.4, "pseudo_coverage": 0.6, "pseudo_accuracy": nan, "pseudo_miou": 0.5},
    ]
    panel = curves_figure(rows).axes[2]
    series = {line.get_label(): line.get_xydata().tolist() for line in panel.get_lines()}
    assert series == {
        "kept": [[10.0, 50.0], [20.0, 60.0]],
        "accuracy of kept": [[10.0, 80.0]],
        "mIoU": [[10.0, 40.0], [20.0, 50.0]],
    }
    supervised = [{k: v for k, v in r.items() if not k.startswith("pseudo_")} for r in rows]
    assert len(curves_figure(supervised).axes) == 2


def test_a_fixmatch_run_logs_pseudo_label_quality_at_its_evaluations(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    run = ["method=fixmatch", "train.epochs=1", "train.progress=false", "semi.fixmatch.threshold=0.5"]
    cli.main(["--config", str(config), *run, f"out_dir={out}"])  # 9 steps, evaluated at 6 and 9
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(COLUMNS) <= set(rows[0])
    for row in rows:
        values = [row[c] for c in COLUMNS]
        if not row["miou"]:
            assert values == ["", "", ""]
            continue
        coverage, miou = float(row["pseudo_coverage"]), float(row["pseudo_miou"])
        assert 0 <= coverage <= 1 and 0 <= miou <= 1
        assert row["pseudo_accuracy"] == "" if coverage == 0 else 0 <= float(row["pseudo_accuracy"]) <= 1
    assert [r["step"] for r in rows if r["pseudo_miou"]] == ["6", "9"]
    assert (out / "curves.png").is_file()
