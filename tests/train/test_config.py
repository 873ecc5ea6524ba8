import re

import pytest
import torch

from semiseg_fast.train.config import default_config, load_config, resume_conflicts


def test_defaults_are_valid_and_not_mutated():
    config = load_config()
    config["data"]["crop_size"] = 1
    assert default_config()["data"]["crop_size"] != 1
    assert load_config()["method"] == "fixmatch"


def test_overrides_parse_yaml_values():
    config = load_config(
        None,
        [
            "method=u2pl",
            "train.epochs=3",
            "data.scale_range=[0.5, 2.0]",
            "seed=7",
            "model.kwargs={width: 16}",
            "data.root=",
        ],
    )
    assert config["method"] == "u2pl" and config["train"]["epochs"] == 3 and config["seed"] == 7
    assert config["data"]["scale_range"] == [0.5, 2.0] and config["model"]["kwargs"] == {"width": 16}
    assert config["data"]["root"] is None


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: supervised\ntrain:\n  epochs: 2\n")
    config = load_config(str(path), ["train.epochs=5"])
    assert config["method"] == "supervised" and config["train"]["epochs"] == 5


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.epochs=3", "unknown key 'trian'"),
        ("train.epoch=3", "unknown key 'train.epoch'"),
        (
            "method=mixmatch",  # the list: the built-in methods (and any registered since)
            "method expected classmix | cps | depthmix | fixmatch | pseudoseg | rrn | selftrain | supervised | u2pl",
        ),
        ("train.epochs=0", "train.epochs expected a positive integer"),
        ("data.batch_size=2.5", "data.batch_size expected a positive integer"),
        ("data.labeled_fraction=0", "data.labeled_fraction expected a fraction"),
        ("data.name=voc", "data.root expected a folder"),
        ("train.amp=fp8", "train.amp expected"),
        ("semi.pseudoseg.classifier_backprop=maybe", "semi.pseudoseg.classifier_backprop expected true | false"),
        ("train=3", "'train' expects a mapping"),
        ("epochs", "expected key.sub=value"),
        ("seed=1.5", "seed expected an integer in [0, 2**63)"),
        ("seed=-1", "seed expected an integer in [0, 2**63)"),
        ("seed=9223372036854775808", "seed expected an integer in [0, 2**63)"),  # torch's int64 seed overflows
        ("deterministic=1", "deterministic expected true | false"),
        ("optim.lr=0", "optim.lr expected null or a positive number"),
        ("optim.lr=fast", "optim.lr expected null or a positive number"),
        ("optim.momentum=1.5", "optim.momentum expected a number in [0, 1)"),
        ("optim.weight_decay=-0.1", "optim.weight_decay expected a number >= 0"),
        ("optim.warmup_steps=-1", "optim.warmup_steps expected an integer >= 0"),
        ("optim.poly_power=-1", "optim.poly_power expected a number >= 0"),
        ("semi.ema_decay=1.5", "semi.ema_decay expected a number in [0, 1]"),
        ("semi.cutmix_p=-0.5", "semi.cutmix_p expected a number in [0, 1]"),
        ("semi.unsupervised_weight=-1", "semi.unsupervised_weight expected a number >= 0"),
        ("semi.strong_color=yes please", "semi.strong_color expected true | false"),
        ("data.scale_range=[1.5, 0.75]", "data.scale_range expected [min, max]"),
        ("data.scale_range=[0, 1]", "data.scale_range expected [min, max]"),
        ("data.scale_range=1.5", "data.scale_range expected [min, max]"),
        ("data.num_workers=-1", "data.num_workers expected an integer >= 0"),
        ("data.ignore_index=256", "data.ignore_index expected an integer in [0, 255]"),
        ("data.labeled_fraction=half", "data.labeled_fraction expected a fraction in (0, 1]"),
        ("data.labeled_fraction=1.5", "data.labeled_fraction expected a fraction in (0, 1]"),
        ("data.split_seed=-1", "data.split_seed expected an integer in [0, 2**63)"),
        ("data.split_seed=0.5", "data.split_seed expected an integer in [0, 2**63)"),
        ("data.split_seed=9223372036854775808", "data.split_seed expected an integer in [0, 2**63)"),
        ("eval.window=0", "eval.window expected a positive integer"),
        ("eval.stride=0", "eval.stride expected a positive integer"),
        ("eval.batch_size=0", "eval.batch_size expected a positive integer"),
        ("semi.u2pl.num_queries=2.5", "semi.u2pl.num_queries expected a positive integer"),
        ("semi.u2pl.sup_only_epochs=-1", "semi.u2pl.sup_only_epochs expected an integer >= 0"),
        ("semi.u2pl.high_rank=3", "semi.u2pl.high_rank expected an integer > semi.u2pl.low_rank=3"),
        ("semi.u2pl.drop_percent=120", "semi.u2pl.drop_percent expected a percentage"),
        ("train.channels_last=nope", "train.channels_last expected true | false"),
        ("train.epochs=true", "train.epochs expected a positive integer"),
        ("train.fast2x.low_res_scale=abc", "train.fast2x.low_res_scale expected a fraction"),
        ("train.fast2x.low_res_lr=abc", "train.fast2x.low_res_lr expected null or a positive factor"),
        ("train.fast2x.low_res_lr=true", "train.fast2x.low_res_lr expected null or a positive factor"),
        ("out_dir=runs/{name}", "out_dir expected a folder"),
        ("model.kwargs=3", "model.kwargs expected a mapping"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises((KeyError, ValueError, TypeError), match=re.escape(message)):
        load_config(None, [override])


def test_sgd_needs_momentum():
    with pytest.raises(ValueError, match=r"optim.momentum expected a number in \(0, 1\) with sgd"):
        load_config(None, ["optim.name=sgd", "optim.momentum=0"])


def test_a_model_kwargs_key_is_merged_and_the_whole_mapping_replaced():
    assert load_config(None, ["model.kwargs.width=16"])["model"]["kwargs"] == {"width": 16, "rep_dim": 64}
    assert load_config(None, ["model.kwargs={width: 16}"])["model"]["kwargs"] == {"width": 16}
    assert load_config(None, ["model.kwargs=", "model.kwargs.depth=2"])["model"]["kwargs"] == {"depth": 2}
    with pytest.raises(TypeError, match="'model.kwargs.width' expects a mapping"):
        load_config(None, ["model.kwargs.width.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(TypeError, match="mapping at the top level"):
        load_config(str(bad))


def test_resume_accepts_the_same_folder_by_another_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pseudo").mkdir()
    saved = load_config(None, ["method=selftrain", "semi.selftrain.pseudo_dir=pseudo"])
    same = load_config(None, ["method=selftrain", f"semi.selftrain.pseudo_dir={tmp_path / 'pseudo'}"])
    other = load_config(None, ["method=selftrain", f"semi.selftrain.pseudo_dir={tmp_path / 'other'}"])
    assert resume_conflicts(saved, same) == []
    assert resume_conflicts(saved, other) == ["semi.selftrain.pseudo_dir"]


def test_eval_stride_is_checked_against_the_window_only_when_sliding():
    assert load_config(None, ["eval.window=32"])["eval"]["window"] == 32  # whole-image eval uses neither
    with pytest.raises(ValueError, match="eval.stride"):
        load_config(None, ["eval.mode=slide", "eval.window=32", "eval.stride=48"])


def test_split_seed_draws_the_labeled_images_and_the_run_seed_does_not():
    from semiseg_fast.train.data import build_datasets

    def split(*overrides):
        config = load_config(None, ["data.synthetic_train=40", "data.synthetic_val=2", *overrides])
        data = build_datasets(config["data"])
        return data.labeled.indices, data.unlabeled.indices

    default = split()
    assert split("seed=7", "method=u2pl") == default
    labeled, unlabeled = split("data.split_seed=1")
    assert labeled != default[0] and len(labeled) == len(default[0]) == 5
    assert sorted(labeled + unlabeled) == list(range(40))  # a partition of the pool
    former = torch.randperm(40, generator=torch.Generator().manual_seed(2024)).tolist()
    assert default == (former[:5], former[5:])  # the split every run had before the option: the tables stand
