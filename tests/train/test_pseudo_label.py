import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg_fast import pseudo_label
from semiseg_fast.data import DataError, normalize
from semiseg_fast.data.pseudo_labels import PseudoLabels
from semiseg_fast.train import cli as train_cli
from semiseg_fast.train.checkpoint import save_atomic
from semiseg_fast.train.config import load_config
from semiseg_fast.train.data import PseudoLabeledView, build_datasets
from semiseg_fast.train.run_model import build_run_model

from .helpers import TINY, run_module


def _overrides(tree, prefix=""):
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and prefix + key != "model.kwargs":
            out += _overrides(value, prefix + key + ".")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _checkpoint(path, extra=()):
    """An (untrained) checkpoint of the tiny configuration: all the generator needs."""
    config = load_config(None, _overrides(TINY) + ["method=supervised", *extra])
    torch.manual_seed(0)
    model = build_run_model(config, 6 if config["data"]["name"] == "synthetic" else config["data"]["num_classes"])
    torch.save(
        {"config": config, "model": model.state_dict(), "teacher": None, "step": 0, "num_classes": model.num_classes},
        path,
    )
    return str(path)


def _files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            if n != "manifest.json":
                with open(os.path.join(root, n), "rb") as f:
                    out[os.path.relpath(os.path.join(root, n), folder)] = f.read()
    return out


def test_generation_resumes_after_an_interruption(tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "t.pt")
    full = pseudo_label.generate(ckpt, str(tmp_path / "a"), progress=False, batch_size=4)
    assert len(full["items"]) == full["split_size"] == 18 and not full["failed"]
    calls = {"n": 0}
    real = pseudo_label.png_bytes

    def crash_on_the_seventh(array):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # killed while writing the 4th image
        return real(array)

    monkeypatch.setattr(pseudo_label, "png_bytes", crash_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label.generate(ckpt, str(tmp_path / "b"), progress=False, batch_size=4)
    monkeypatch.setattr(pseudo_label, "png_bytes", real)
    partial = _files(tmp_path / "b")
    assert not any(".tmp-" in name for name in partial)
    assert len([n for n in partial if n.startswith("labels")]) == 3  # complete images only
    (tmp_path / "b" / "labels" / ".tmp-stale.png").write_bytes(b"torn")  # what a SIGKILL would leave
    before = {n: os.path.getmtime(tmp_path / "b" / n) for n in partial if n.startswith("labels")}
    resumed = pseudo_label.generate(ckpt, str(tmp_path / "b"), progress=False, batch_size=4)
    assert resumed["items"] == full["items"]
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    assert all(os.path.getmtime(tmp_path / "b" / n) == t for n, t in before.items())  # skipped, not rewritten


def test_multiscale_flip_and_topk(tmp_path):
    ckpt = _checkpoint(tmp_path / "t.pt")
    out = tmp_path / "pl"
    pseudo_label.generate(ckpt, str(out), scales=[0.75, 1.0, 1.5], flip=True, topk=3, progress=False)
    state = torch.load(ckpt, weights_only=False)
    model = build_run_model(state["config"], 6)
    model.load_state_dict(state["model"])
    model.eval()
    data = build_datasets(state["config"]["data"])
    image, _ = data.unlabeled[0]
    prob, _ = pseudo_label.teacher_probabilities(
        model, normalize(image[None]).contiguous(memory_format=torch.channels_last), [0.75, 1.0, 1.5], True
    )
    labels = PseudoLabels(str(out))
    label, conf, (classes, probs) = labels.load(0)
    assert torch.equal(label.long(), prob[0].argmax(0))
    assert (conf - prob[0].amax(0)).abs().max() <= 0.5 / 255 + 1e-6
    assert classes.shape == probs.shape == (3, 32, 32) and torch.equal(classes[0].long(), label.long())
    torch.testing.assert_close(probs[0], prob[0].amax(0), atol=1e-3, rtol=1e-3)
    assert (probs[:-1] >= probs[1:]).all()


def test_corrupt_image_is_reported_and_skipped(tmp_path):
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"im{i}.jpg")
        Image.fromarray(rng.integers(0, 3, (24, 24), dtype=np.uint8)).save(root / "SegmentationClass" / f"im{i}.png")
    (root / "JPEGImages" / "im2.jpg").write_bytes(b"definitely not a jpeg")
    (root / "labeled.txt").write_text("im0\nim1\n")
    (root / "unlabeled.txt").write_text("im2\nim3\nim4\n")
    (root / "val.txt").write_text("im0\n")
    ckpt = _checkpoint(tmp_path / "t.pt", ["data.name=voc", f"data.root={root}", "data.num_classes=3"])
    result = run_module(
        "semiseg_fast.pseudo_label", "--checkpoint", ckpt, "--out", str(tmp_path / "pl"), "--no-progress"
    )
    assert result.returncode == 1
    assert "im2.jpg" in result.stderr and "2 of 3 images" in result.stdout
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert [f["id"] for f in manifest["failed"]] == ["JPEGImages__im2"]
    assert sorted(os.listdir(tmp_path / "pl" / "labels")) == ["JPEGImages__im3.png", "JPEGImages__im4.png"]


def test_pseudo_labeled_view(tmp_path):
    ckpt = _checkpoint(tmp_path / "t.pt")
    pseudo_label.generate(ckpt, str(tmp_path / "pl"), topk=2, progress=False)
    config = torch.load(ckpt, weights_only=False)["config"]
    data = build_datasets(config["data"])
    labels = PseudoLabels(str(tmp_path / "pl"))
    dc = dict(config["data"], scale_range=[1.0, 1.0])
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # confidence 0 .. 0.97 across columns
    Image.fromarray(ramp).save(tmp_path / "pl" / "confidence" / f"{labels.ids[0]}.png")
    _, conf, _ = labels.load(0)
    threshold = 0.5
    image, label = PseudoLabeledView(data.unlabeled, str(tmp_path / "pl"), dc, threshold=threshold)[(0, 5)]
    assert image.shape == (3, 32, 32)  # scale 1 and a full-size crop: only a possible flip
    assert int((label != 255).sum()) == int((conf >= threshold).sum()) < 32 * 32
    image, label, classes, probs = PseudoLabeledView(
        data.unlabeled, str(tmp_path / "pl"), dc, soft=True, class_balanced=True
    )[(1, 7, 16)]
    assert image.shape == (3, 16, 16) and label.shape == (16, 16) and classes.shape == probs.shape == (2, 16, 16)
    assert torch.equal(classes[0], label.long())
    # the student's strong view: the same crop and labels, the colours changed, and a CutMix box
    weak = PseudoLabeledView(data.unlabeled, str(tmp_path / "pl"), dc, soft=True)[(1, 7, 16)]
    plain = PseudoLabeledView(data.unlabeled, str(tmp_path / "pl"), dc, soft=True, strong=(False, 0.0))[(1, 7, 16)]
    strong = PseudoLabeledView(data.unlabeled, str(tmp_path / "pl"), dc, soft=True, strong=(True, 1.0))[(1, 7, 16)]
    assert all(torch.equal(a, b) for a, b in zip(weak, plain[:4])) and not plain[4].any()
    assert all(torch.equal(a, b) for a, b in zip(weak[1:], strong[1:4]))
    assert not torch.equal(strong[0], weak[0]) and strong[4].shape == (16, 16) and strong[4].any()
    with pytest.raises(ValueError, match="was written for a split of 18 images"):
        PseudoLabeledView(data.labeled, str(tmp_path / "pl"), dc)
    pseudo_label.generate(ckpt, str(tmp_path / "hard"), progress=False)
    with pytest.raises(ValueError, match="no top-k probabilities"):
        PseudoLabeledView(data.unlabeled, str(tmp_path / "hard"), dc, soft=True)
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        PseudoLabeledView(data.unlabeled, str(tmp_path), dc)


def test_pseudo_labels_of_other_images_are_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "t.pt")
    pseudo_label.generate(ckpt, str(tmp_path / "pl"), progress=False)
    config = load_config(None, _overrides(TINY) + ["method=selftrain", f"semi.selftrain.pseudo_dir={tmp_path / 'pl'}"])
    # another pool with the same number of unlabeled images (7 of 25 labeled): other scenes
    other = dict(config["data"], synthetic_train=25, labeled_fraction=0.28)
    unlabeled = build_datasets(other).unlabeled
    assert len(unlabeled) == 18
    with pytest.raises(ValueError, match=r"pseudo_dir: .*pl' holds labels of other images .* ids differ"):
        PseudoLabeledView(unlabeled, str(tmp_path / "pl"), other)
    smaller = dict(config["data"], image_size=16)  # the same scenes, rendered at another size
    with pytest.raises(
        DataError,
        match=r"pseudo_dir: .* has a \(32, 32\) label for image 'scene\d+', which is "
        r"\(16, 16\)",
    ):
        PseudoLabeledView(build_datasets(smaller).unlabeled, str(tmp_path / "pl"), smaller)
    with pytest.raises(ValueError, match="written for 6 classes, but this run has 5"):
        PseudoLabeledView(build_datasets(config["data"]).unlabeled, str(tmp_path / "pl"), config["data"], num_classes=5)
    with pytest.raises(SystemExit, match="error: pseudo_dir"):  # the train CLI: a message before training starts
        train_cli.main(
            [
                *_overrides(TINY),
                "method=selftrain",
                f"semi.selftrain.pseudo_dir={tmp_path / 'pl'}",
                "data.image_size=16",
                "data.crop_size=16",
                f"out_dir={tmp_path / 'student'}",
            ]
        )
    assert not (tmp_path / "student").exists()


def test_rerun_with_other_settings_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "t.pt")
    out = str(tmp_path / "pl")
    first = pseudo_label.generate(ckpt, out, progress=False)
    assert first["teacher_sha256"] == json.loads((tmp_path / "pl" / "settings.json").read_text())["teacher_sha256"]
    before = _files(tmp_path / "pl")
    with pytest.raises(
        ValueError,
        match=r"--out: .*pl' holds pseudo-labels made with other settings \(scales "
        r"\[1.0\] there, \[0.75, 1.0\] now; flip False there, True now",
    ):
        pseudo_label.generate(ckpt, out, scales=[0.75, 1.0], flip=True, progress=False)
    with pytest.raises(ValueError, match="topk 0 there, 2 now"):
        pseudo_label.generate(ckpt, out, topk=2, progress=False)
    state = torch.load(ckpt, weights_only=False)  # retrained: the same path and step, other weights
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_atomic({k: v for k, v in state.items() if k != "sha256"}, ckpt)
    with pytest.raises(ValueError, match=r"teacher .*t.pt' at step 0 there, .*t.pt' at step 0 now \(other weights\)"):
        pseudo_label.generate(ckpt, out, progress=False)
    assert _files(tmp_path / "pl") == before  # nothing written by the refused runs
    with pytest.raises(SystemExit, match="error: --out"):
        pseudo_label.main(["--checkpoint", ckpt, "--out", out, "--no-progress"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--scales", "0"], "--scales"),
        (["--scales", "nan"], "--scales"),
        (["--topk", "-1"], "--topk"),
    ],
)
def test_bad_numeric_arguments_name_the_flag(tmp_path, args, message):
    ckpt = _checkpoint(tmp_path / "t.pt")
    with pytest.raises(SystemExit) as e:
        pseudo_label.main(["--checkpoint", ckpt, "--out", str(tmp_path / "pl"), "--no-progress", *args])
    assert isinstance(e.value.code, str) and message in e.value.code
    assert not (tmp_path / "pl").exists()


def test_recorded_data_root_compares_as_a_folder(tmp_path, monkeypatch):
    from semiseg_fast.pseudo_label import _comparable

    monkeypatch.chdir(tmp_path)
    relative, absolute = ({"data": {"name": "voc", "root": root}} for root in ("voc", str(tmp_path / "voc")))
    assert _comparable(relative, "data") == _comparable(absolute, "data")
    assert _comparable(relative, "data") != _comparable({"data": {"name": "voc", "root": "other"}}, "data")
