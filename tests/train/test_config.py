import pytest

from semiseg_fast.train.config import DEFAULTS, load_config


def test_defaults_are_valid_and_not_mutated():
    config = load_config()
    config["data"]["crop_size"] = 1
    assert DEFAULTS["data"]["crop_size"] != 1
    assert load_config()["method"] == "fixmatch"


def test_overrides_parse_yaml_values():
    config = load_config(None, ["method=u2pl", "train.epochs=3", "data.scale_range=[0.5, 2.0]", "seed=7",
                                "model.kwargs={width: 16}", "data.root="])
    assert config["method"] == "u2pl" and config["train"]["epochs"] == 3 and config["seed"] == 7
    assert config["data"]["scale_range"] == [0.5, 2.0] and config["model"]["kwargs"] == {"width": 16}
    assert config["data"]["root"] is None


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: supervised\ntrain:\n  epochs: 2\n")
    config = load_config(str(path), ["train.epochs=5"])
    assert config["method"] == "supervised" and config["train"]["epochs"] == 5


@pytest.mark.parametrize("override, message", [
    ("trian.epochs=3", "unknown key 'trian'"),
    ("train.epoch=3", "unknown key 'train.epoch'"),
    ("method=mixmatch", "method expected supervised | fixmatch | u2pl"),
    ("train.epochs=0", "train.epochs expected a positive integer"),
    ("data.batch_size=2.5", "data.batch_size expected a positive integer"),
    ("data.labeled_fraction=0", "data.labeled_fraction expected a fraction"),
    ("data.name=voc", "data.root expected a folder"),
    ("train.amp=fp8", "train.amp expected"),
    ("semi.pseudoseg.classifier_backprop=maybe", "semi.pseudoseg.classifier_backprop expected true | false"),
    ("train=3", "'train' expects a mapping"),
    ("epochs", "expected key.sub=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises((KeyError, ValueError, TypeError), match=message.replace("|", r"\|").replace("(", r"\(")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(TypeError, match="mapping at the top level"):
        load_config(str(bad))
