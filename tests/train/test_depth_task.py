"""Supervised training with the depth task (Hoyer et al.'s multi-task variant) and from a depth run."""

import pytest
import torch

from semiseg_fast.depth.networks import disparity_to_depth
from semiseg_fast.depth.objective import depth_task_loss
from semiseg_fast.train import cli
from semiseg_fast.train.config import load_config

from .helpers import whole_and_resumed


def test_depth_task_loss_is_the_log_depth_error_on_valid_pixels():
    disparity = torch.full((1, 1, 2, 2), 0.5)
    target = torch.full((1, 1, 8, 8), 0.25)
    target[:, :, :4, :4] = 0.9  # ignored: the top-left cell of the head's grid is padding
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[:, :4, :4] = False
    loss = depth_task_loss(disparity, target, valid)
    expected = (disparity_to_depth(torch.tensor(0.5)).log() - disparity_to_depth(torch.tensor(0.25)).log()).abs()
    assert torch.allclose(loss, expected)


def test_the_depth_task_trains_the_head_and_leaves_the_depth_network_frozen(tiny_config, tmp_path, depth_run):
    out = tmp_path / "run"
    cli.main(["--config", tiny_config, "method=supervised", f"semi.supervised.depth_run={depth_run}",
              "train.epochs=1", "train.progress=false", f"out_dir={out}"])  # fmt: skip
    state = torch.load(out / "last.pt", weights_only=False)
    assert any(k.startswith("depth_head.") for k in state["model"])
    frozen = torch.load(f"{depth_run}/depth.pt")["depth"]
    assert all(torch.equal(state["criterion"][k], v) for k, v in frozen.items())


def test_a_killed_depth_task_run_resumes_exactly(tiny_config, tmp_path, depth_run, monkeypatch):
    run = ["--config", tiny_config, "method=supervised", f"semi.supervised.depth_run={depth_run}",
           "train.progress=false", "deterministic=true"]  # fmt: skip
    whole, resumed = whole_and_resumed(run, tmp_path, monkeypatch)
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])


def test_a_depth_run_without_weights_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="semi.supervised.depth_run.*depth.pt"):
        load_config(None, ["method=supervised", f"semi.supervised.depth_run={tmp_path}"])
    (tmp_path / "depth.pt").write_bytes(b"not a torch file")
    config = load_config(None, ["method=supervised", f"semi.supervised.depth_run={tmp_path}"])
    from semiseg_fast.train.methods.supervised import Supervised

    with pytest.raises(ValueError, match="holds no depth network"):
        Supervised(config, 6)
