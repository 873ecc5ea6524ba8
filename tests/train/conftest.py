import pytest
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
