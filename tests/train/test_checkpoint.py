"""Checkpoints carry a digest of their content: a damaged one is refused, naming it and the
previous good checkpoint kept beside it; checkpoints written before digests still load."""

import pytest
import torch

from semiseg_fast.train.checkpoint import (
    CHECKSUM,
    CheckpointError,
    content_sha256,
    load_checkpoint,
    save_atomic,
)
from semiseg_fast.utils.atomic import remove_temporaries

PATTERN = 1.2345678


def _state(step):
    return {"config": {"seed": 0}, "step": step, "model": {"w": torch.full((256,), PATTERN), "b": torch.arange(3)}}


def _flip_a_weight_byte(path):
    data = bytearray(path.read_bytes())
    at = data.find(torch.tensor([PATTERN]).numpy().tobytes())
    assert at > 0
    data[at + 1] ^= 0x10
    path.write_bytes(bytes(data))


def test_round_trip_and_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    save_atomic(_state(1), str(last), keep_previous=True)
    save_atomic(_state(2), str(last), keep_previous=True)
    assert load_checkpoint(str(last))["step"] == 2 and load_checkpoint(str(tmp_path / "previous.pt"))["step"] == 1
    assert CHECKSUM not in load_checkpoint(str(last))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_a_flipped_byte_is_refused_and_the_previous_checkpoint_offered(tmp_path):
    last = tmp_path / "last.pt"
    save_atomic(_state(1), str(last), keep_previous=True)
    save_atomic(_state(2), str(last), keep_previous=True)
    _flip_a_weight_byte(last)
    with pytest.raises(CheckpointError, match=r"last.pt' is (damaged|not a readable).*previous.pt"):
        load_checkpoint(str(last))
    assert load_checkpoint(str(tmp_path / "previous.pt"))["step"] == 1


def test_the_digest_covers_every_entry():
    a, b = _state(1), _state(1)
    assert content_sha256(a) == content_sha256(b)
    b["model"]["b"] = torch.tensor([0, 1, 3])
    assert content_sha256(a) != content_sha256(b)
    assert content_sha256({**a, "step": 2}) != content_sha256(a)
    assert content_sha256({**a, "model": {**a["model"], "w": a["model"]["w"].double()}}) != content_sha256(a)


def test_a_checkpoint_without_a_digest_still_loads(tmp_path):
    torch.save(_state(5), tmp_path / "old.pt")  # as written before digests
    assert load_checkpoint(str(tmp_path / "old.pt"))["step"] == 5


def test_temporaries_of_interrupted_writes_are_removed(tmp_path):
    (tmp_path / ".tmp-abc.pt").write_bytes(b"x")
    (tmp_path / "keep.pt").write_bytes(b"y")
    assert remove_temporaries(str(tmp_path)) == [str(tmp_path / ".tmp-abc.pt")]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]
