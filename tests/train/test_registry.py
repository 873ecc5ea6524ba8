"""Methods are registered by name, one file each: the built-in ones are listed, a user's method is
trained by its import path with its own config section, and bad registrations are refused."""

import pytest
import torch
import yaml

from semiseg_fast.train import cli, methods
from semiseg_fast.train.config import default_config, load_config

from .helpers import TINY

USER_METHOD = "tests.train.toy_method:MSEConsistency"


def test_list_methods(capsys):
    cli.main(["--list-methods"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == methods.names()
    assert {"supervised", "fixmatch", "u2pl", "pseudoseg", "selftrain"} <= set(methods.names())
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # a description each


def test_each_method_owns_its_section():
    semi = default_config()["semi"]
    for name in methods.names():
        method = methods.get(name)
        assert (name in semi) == (method.config is not None)
    assert semi["fixmatch"]["threshold"] == 0.95 and "threshold" not in semi


def test_a_users_method_trains_from_its_import_path(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    cli.main(["--config", str(config), f"method={USER_METHOD}", "semi.mse_consistency.weight=2.0",
              "train.epochs=1", "train.progress=false", "train.amp=off", f"out_dir={out}"])  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == USER_METHOD and saved["semi"]["mse_consistency"] == {"weight": 2.0}
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 9 and state["teacher"] is not None
    cli.main(["--resume", str(out), "train.progress=false"])  # the checkpoint names the method: it is imported again


def test_bad_methods_are_refused():
    with pytest.raises(ValueError, match="method 'tests.train.toy_method:Nope' cannot be imported"):
        load_config(None, ["method=tests.train.toy_method:Nope"])
    with pytest.raises(KeyError, match="unknown key 'semi.nope'"):
        load_config(None, ["semi.nope.weight=1"])
    with pytest.raises(KeyError, match="'semi.threshold': it is now 'semi.fixmatch.threshold'"):
        load_config(None, ["semi.threshold=0.9"])
    with pytest.raises(TypeError, match="expected a subclass of Method"):
        methods.register(int)

    class Clash(methods.Method):
        name, description = "fixmatch", "another fixmatch"

    with pytest.raises(ValueError, match="a method named 'fixmatch' exists already"):
        methods.register(Clash)


def test_a_checkpoint_from_before_the_method_sections_resumes_with_its_threshold():
    from semiseg_fast.train.config import config_from_checkpoint, validate

    old = default_config()
    del old["semi"]["fixmatch"]
    old["semi"]["threshold"] = 0.7  # fixmatch's threshold, where checkpoints saved it before
    config = config_from_checkpoint({"config": old})
    validate(config)
    assert config["semi"]["fixmatch"]["threshold"] == 0.7 and "threshold" not in config["semi"]
