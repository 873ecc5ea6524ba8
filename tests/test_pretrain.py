"""The pretraining corpus and ``python -m semiseg_fast.pretrain``: its own scenes and task, the
same file from the same command, an interrupted run that resumes to that file, and the shipped
weights (documented size and digest, loaded by default)."""

import os
import re

import numpy as np
import pytest
import torch

from semiseg_fast import pretrain
from semiseg_fast.data.pretrain_corpus import (
    NUM_LABELS,
    PRETRAIN_SEED,
    SHAPES,
    PretrainCorpus,
    render_pretrain_scene,
)
from semiseg_fast.data.synthetic import render_scene
from semiseg_fast.models.deeplab import SmallEncoder
from semiseg_fast.models.pretrained import embedded_weights_path, load_encoder_weights, read_state_dict
from semiseg_fast.train.config import load_config
from semiseg_fast.train.data import SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED
from semiseg_fast.train.run_model import build_run_model
from semiseg_fast.train.start import base_lr, head_lr_mult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--images", "48", "--val-images", "8", "--image-size", "16", "--batch-size", "16", "--epochs", "2",
        "--warmup-steps", "2", "--width", "4", "--threads", "1"]  # fmt: skip


def test_the_corpus_has_its_own_seeds_and_labels():
    assert PRETRAIN_SEED not in (SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED)
    assert PRETRAIN_SEED + 1 not in (SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED)
    image, labels = render_pretrain_scene(PRETRAIN_SEED, 3, (48, 40))
    assert image.shape == (48, 40, 3) and image.dtype == np.uint8
    assert labels.shape == (NUM_LABELS,) and set(np.unique(labels)) <= {0.0, 1.0}
    # each visible object names one shape and one texture: as many shape labels as texture labels at most
    corpus = PretrainCorpus(64, 32)
    shapes, textures = corpus.labels[:, : len(SHAPES)].sum(1), corpus.labels[:, len(SHAPES) :].sum(1)
    assert (shapes >= 1).all() | (textures >= 1).all()
    assert (shapes > 0).float().mean() > 0.9 and (corpus.labels.mean(0) > 0.05).all()  # every label occurs
    again = PretrainCorpus(64, 32)
    assert torch.equal(corpus.images, again.images) and torch.equal(corpus.labels, again.labels)
    assert not np.array_equal(render_pretrain_scene(PRETRAIN_SEED, 0, (32, 32))[0], render_scene(0, 0, (32, 32))[0])


def test_bad_corpus_arguments():
    with pytest.raises(ValueError, match="num_images"):
        PretrainCorpus(0)
    with pytest.raises(ValueError, match="image_size"):
        PretrainCorpus(4, image_size=8)


@pytest.mark.parametrize(
    "args, message", [(["--images", "0"], "--images"), (["--lr", "-1"], "--lr"), (["--width", "5"], "--width")]
)
def test_bad_pretrain_arguments(args, message, capsys):
    with pytest.raises(SystemExit):
        pretrain.parse_args(args)
    assert message in capsys.readouterr().err


def test_the_same_command_writes_the_same_file_and_resumes_to_it(tmp_path, monkeypatch):
    first, second, resumed = (str(tmp_path / f"{n}.pt") for n in ("first", "second", "resumed"))
    assert pretrain.main([*TINY, "--out", first]) == 0
    assert pretrain.main([*TINY, "--out", second]) == 0
    assert pretrain.file_sha256(first) == pretrain.file_sha256(second)
    state = read_state_dict(first)
    load_encoder_weights(SmallEncoder(4), state, "test")  # the encoder's own state dict

    # killed during the second epoch's evaluation: the first epoch's state is on disk
    real_score, calls = pretrain.score, []

    def dies_second_time(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(*args)

    monkeypatch.setattr(pretrain, "score", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main([*TINY, "--out", resumed])
    assert os.path.isfile(resumed + ".partial") and not os.path.exists(resumed)
    monkeypatch.setattr(pretrain, "score", real_score)
    assert pretrain.main([*TINY, "--epochs", "3", "--out", resumed, "--resume"]) == 2  # other settings
    assert pretrain.main([*TINY, "--out", resumed, "--resume"]) == 0
    assert pretrain.file_sha256(resumed) == pretrain.file_sha256(first)
    assert not os.path.exists(resumed + ".partial")


def test_the_shipped_weights_are_documented_and_load_by_default():
    path = embedded_weights_path()
    docs = open(os.path.join(ROOT, "docs", "pretraining.md")).read()
    match = re.search(r"SHA-256 `([0-9a-f]{64})`, (\d[\d,]*) bytes", docs)
    assert match, "docs/pretraining.md states the shipped file's SHA-256 and size"
    assert pretrain.file_sha256(path) == match.group(1)
    assert os.path.getsize(path) == int(match.group(2).replace(",", ""))

    config = load_config(None, ["method=supervised"])
    model = build_run_model(config, 6, load_weights=True)
    shipped = read_state_dict(path)
    assert all(torch.equal(v, shipped[k]) for k, v in model.encoder.state_dict().items())
    assert (base_lr(config), head_lr_mult(config)) == (0.002, 10.0)
    scratch = load_config(None, ["method=supervised", "model.pretrained=none"])
    assert (base_lr(scratch), head_lr_mult(scratch)) == (0.008, 1.0)
    chosen = load_config(None, ["optim.lr=0.01", "optim.head_lr_mult=3"])
    assert (base_lr(chosen), head_lr_mult(chosen)) == (0.01, 3.0)
    assert not torch.equal(build_run_model(scratch, 6, load_weights=True).encoder.stem[0][0].weight,
                           shipped["stem.0.0.weight"])  # fmt: skip


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.pretrained=embedded", "model.kwargs.width=16"], "model.pretrained"),
        (["model.pretrained=imagenet"], "model.pretrained"),
        (["model.pretrained=/no/such/file.pt"], "model.pretrained"),
        (["model.output_stride=16"], "model.output_stride"),
        (["model.backbone=resnet18"], "model.backbone"),
    ],
)
def test_bad_pretrained_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["method=supervised", *overrides])


def test_auto_is_none_at_another_width_and_for_a_users_model():
    config = load_config(None, ["method=supervised", "model.kwargs.width=16"])
    assert (base_lr(config), head_lr_mult(config)) == (0.008, 1.0)
    user = load_config(None, ["method=supervised", "model.name=tests.models.test_models:TinyUserModel"])
    assert head_lr_mult(user) == 1.0
