"""Training with a ResNet-50 encoder started from a weights file laid out as torchvision's ImageNet
files: on the embedded data and on a VOC-layout folder, a couple of steps at 32 pixels. The
decoder trains at 10x the encoder's rate by default when the encoder starts pretrained."""

import csv
import urllib.error

import numpy as np
import pytest
import torch

from semiseg_fast.models.resnet import ResNetEncoder
from semiseg_fast.train import Trainer, cli, load_config
from semiseg_fast.train.distributed import shutdown
from semiseg_fast.train.start import head_lr_mult

from ..data.test_label_checks import _label, _voc

# 4 labeled + 4 unlabeled 32-pixel scenes: 2 steps of 2 images, evaluated once at the end
SMALL = [
    "method=supervised",
    "model.backbone=resnet50",
    "model.output_stride=16",
    "data.synthetic_train=8",
    "data.synthetic_val=2",
    "data.labeled_fraction=0.5",
    "data.image_size=32",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "optim.warmup_steps=1",
    "train.epochs=1",
    "train.eval_every=100",
    "train.checkpoint_every=100",
    "train.grid_images=1",
    "train.progress=false",
    "train.amp=off",
    "eval.batch_size=2",
]


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a folder data set's scan record


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A random resnet50 state dict saved as torchvision's ImageNet file is (with fc.*)."""
    state = {
        k: torch.randn_like(v) * 0.05 if v.is_floating_point() else v for k, v in ResNetEncoder().state_dict().items()
    }
    state.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    path = tmp_path_factory.mktemp("weights") / "resnet50-0676ba61.pth"
    torch.save(state, path)
    return path


def _rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_resnet50_trains_on_the_embedded_data_from_a_weights_file(tmp_path, weights_file):
    config = load_config(None, [*SMALL, f"model.pretrained={weights_file}", f"out_dir={tmp_path / 'run'}"])
    trainer = Trainer(config)
    try:
        file_state = torch.load(weights_file, weights_only=True)
        encoder = trainer.model.encoder.state_dict()
        assert all(torch.equal(encoder[k], v) for k, v in file_state.items() if not k.startswith("fc."))
        encoder_group, head_group = trainer.optimizer.param_groups
        assert encoder_group["lr_mult"] == 1.0 and head_group["lr_mult"] == 10.0  # optim.head_lr_mult: null
        assert sum(p.numel() for p in encoder_group["params"]) == 23_508_032
        assert trainer.num_steps == 2
        result = trainer.train()
    finally:
        shutdown()
    rows = _rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [2] and np.isfinite(float(rows[0]["loss"]))
    assert 0.0 <= result["miou"] <= 1.0
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert not torch.equal(trained["encoder.layer4.2.conv3.weight"], file_state["layer4.2.conv3.weight"])


def test_resnet50_trains_on_a_voc_folder_from_a_weights_file(tmp_path, weights_file):
    root = tmp_path / "voc"
    _voc(root, {f"im{i}": _label(1 + i % 2) for i in range(4)})
    (root / "val.txt").write_text("im0\nim1\n")
    out = tmp_path / "run"
    cli.main(
        [
            *SMALL,
            "data.name=voc",
            f"data.root={root}",
            "data.num_classes=3",
            f"model.pretrained={weights_file}",
            f"out_dir={out}",
        ]
    )
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [2] and np.isfinite(float(rows[0]["loss"])) and rows[0]["miou"] != ""
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["num_classes"] == 3 and state["config"]["model"]["pretrained"] == str(weights_file)


def test_head_lr_mult_defaults_follow_the_starting_weights(weights_file):
    for source, mult in (("auto", 10.0), ("imagenet", 10.0), (str(weights_file), 10.0), ("none", 1.0)):
        config = load_config(None, ["model.backbone=resnet50", f"model.pretrained={source}"])
        assert head_lr_mult(config) == mult, source
    config = load_config(None, ["model.backbone=resnet50", "optim.head_lr_mult=3"])
    assert head_lr_mult(config) == 3.0


def test_imagenet_without_internet_is_a_message_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(SystemExit) as e:
        cli.main([*SMALL, f"out_dir={tmp_path / 'run'}"])  # model.pretrained=auto: imagenet for a ResNet
    message = str(e.value.code)
    assert message.startswith("error: model.pretrained=imagenet: could not download the resnet50 weights")
    assert "model.pretrained=/path/to/resnet50-0676ba61.pth" in message
    assert not (tmp_path / "run").exists()
