import pytest
import torch
import yaml

from .helpers import TINY


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.fixture(autouse=True)
def methods_registered_by_a_test_stay_in_it():
    """A method a test registers (a user's method, by its import path) would otherwise be part of
    every config made after it, and checkpoints written later would carry its section, unknown to
    a fresh process."""
    from semiseg_fast.train.methods import registry

    known, default = dict(registry._METHODS), list(registry._DEFAULT)
    yield
    registry._METHODS.clear()
    registry._METHODS.update(known)
    registry._DEFAULT[:] = default


@pytest.fixture
def depth_run(tmp_path):
    """A depth run's folder holding a (randomly initialised) depth network at width 8."""
    from semiseg_fast.depth import DepthNet

    torch.manual_seed(0)
    net = DepthNet(8)
    folder = tmp_path / "depth"
    folder.mkdir()
    torch.save({"encoder": net.encoder.state_dict(), "depth": net.state_dict()}, folder / "depth.pt")
    return str(folder)
