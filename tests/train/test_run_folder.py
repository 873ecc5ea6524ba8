"""File-system faults end in one error line naming the path: a run folder that is a file, lies
under one or is not writable (before training), and a write that fails mid-run (disk full), which
leaves the previous checkpoint intact and no temporary file."""

import errno

import pytest
import torch
import yaml

from semiseg_fast.train import checkpoint, cli

from .helpers import TINY

RUN = ["method=supervised", "train.epochs=1", "train.progress=false", "train.amp=off"]


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def _error(argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    return e.value.code


def test_out_dir_that_is_a_file_or_lies_under_one(tiny_yaml, tmp_path):
    (tmp_path / "afile").write_text("x")
    message = _error(["--config", tiny_yaml, *RUN, f"out_dir={tmp_path / 'afile'}"])
    assert "out_dir:" in message and "afile' is a file, not a folder" in message
    message = _error(["--config", tiny_yaml, *RUN, f"out_dir={tmp_path / 'afile' / 'run'}"])
    assert "lies under" in message and "afile', which is a file" in message


def test_out_dir_that_is_not_writable(tiny_yaml, tmp_path, monkeypatch):
    # root may write anywhere, so the check's view of the folder is what is replaced here
    monkeypatch.setattr("semiseg_fast.train.run_folder.os.access", lambda path, mode: False)
    message = _error(["--config", tiny_yaml, *RUN, f"out_dir={tmp_path / 'ro' / 'run'}"])
    assert f"'{tmp_path}' is not writable" in message


def test_a_full_disk_mid_run_keeps_the_previous_checkpoint(tiny_yaml, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f):
        calls.append(1)
        if len(calls) == 3:  # last.pt at step 3, best.pt at step 6, then last.pt at step 6: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    message = _error(["--config", tiny_yaml, *RUN, "train.checkpoint_every=3", f"out_dir={out}"])
    assert f"cannot write '{out / 'last.pt'}': No space left on device" in message
    assert f"the last complete checkpoint, '{out / 'last.pt'}', is intact" in message
    assert checkpoint.load_checkpoint(str(out / "last.pt"))["step"] == 3
    assert not list(out.glob(".tmp-*"))
