"""method=cps: two networks teaching each other, their checkpoints, evaluation and resume."""

import csv

import pytest
import torch

import semiseg_fast as sf
from semiseg_fast import reference
from semiseg_fast.models import DeepLabV3Plus, model_outputs
from semiseg_fast.train import cli
from semiseg_fast.train.checkpoint import save_atomic
from semiseg_fast.train.config import load_config
from semiseg_fast.train.loop import Trainer, train
from semiseg_fast.train.methods import get, register
from semiseg_fast.train.methods.base import StepContext, mix

from .helpers import train_killed_after

RUN = ["method=cps", "deterministic=true", "train.progress=false", "train.amp=off"]


def _rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("fused,threshold", [(True, 0.0), (False, 0.0), (True, 0.26)])
def test_step_is_cps_loss_on_targets_of_the_mixed_logits(fused, threshold):
    """Each network's targets for the CutMixed images are the argmax and confidence of its CutMixed
    logits on the sources (mixed from one pass each); the unsupervised term is cps_loss on them."""
    config = load_config(
        None, ["method=cps", f"train.fused_upsample={str(fused).lower()}", f"semi.cps.threshold={threshold}"]
    )
    method = get("cps")(config, 4)
    g = torch.Generator().manual_seed(0)
    n, s = 2, 16
    labeled = [torch.randn(n, 3, s, s, generator=g), torch.randint(0, 4, (n, s, s), generator=g)]
    images_u, pad = torch.randn(n, 3, s, s, generator=g), torch.zeros(n, s, s, dtype=torch.bool)
    pad[:, -2:] = True
    box = sf.mixing.cps_box_masks(n, s, s, g)
    torch.manual_seed(1)
    nets = [DeepLabV3Plus(4, width=8, rep_dim=None).eval() for _ in range(2)]
    ctx = StepContext(nets[0], None, config["semi"], 255, 0, torch.Generator(), 4, peer=nets[1])
    out = method.step(ctx, labeled, [images_u, pad, box])
    up = lambda x: torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=True)
    with torch.no_grad():
        on_sources = [up(model_outputs(net(images_u))[0]) for net in nets]
        on_mix = [up(model_outputs(net(mix(box, images_u)))[0]) for net in nets]
    targets = []
    for logits in on_sources:
        conf, label = mix(box, logits).softmax(dim=1).max(dim=1)
        targets.append((label, conf))
    expected = reference.cps_loss(*on_mix, mix(box, pad), threshold, targets_a=targets[0], targets_b=targets[1])
    torch.testing.assert_close(out.unsupervised, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss, out.supervised + out.unsupervised)
    assert 0 < float(out.mask_ratio) <= 1 and float(out.unsupervised) > 0


def test_trains_two_networks_reports_both_and_their_average(tiny_config, tmp_path):
    out = tmp_path / "cps"
    result = train(load_config(tiny_config, [*RUN, f"out_dir={out}"]))
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 18 and state["teacher"] is None and state["peer"] is not None
    model, peer = state["model"], state["peer"]
    assert model.keys() == peer.keys() and not all(torch.equal(model[k], peer[k]) for k in model)
    assert len(state["optimizer"]["param_groups"]) == 4  # encoder and head of each network
    evaluated = [r for r in _rows(out) if r["miou"]]
    assert len(evaluated) == 3 and all(r["miou_network_2"] and r["miou_averaged"] for r in evaluated)
    assert result["miou_network_2"] == pytest.approx(float(evaluated[-1]["miou_network_2"]))
    assert result["miou_averaged"] == pytest.approx(float(evaluated[-1]["miou_averaged"]))


def test_single_network_methods_leave_the_new_columns_empty(tiny_config, tmp_path):
    cli.main(["--config", tiny_config, "method=supervised", "train.progress=false", f"out_dir={tmp_path}"])
    rows = [r for r in _rows(tmp_path) if r["miou"]]
    assert rows and all(r["miou_network_2"] == "" and r["miou_averaged"] == "" for r in rows)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["peer"] is None


def test_a_killed_run_resumes_both_networks_to_the_same_weights(tiny_config, tmp_path, monkeypatch):
    cli.main(["--config", tiny_config, *RUN, f"out_dir={tmp_path / 'whole'}"])

    # dies after step 7; its last checkpoint is step 6's
    train_killed_after(7, ["--config", tiny_config, *RUN, f"out_dir={tmp_path / 'killed'}"], monkeypatch)
    cli.main(["--resume", str(tmp_path / "killed"), "train.progress=false"])
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    for key in ("model", "peer"):
        assert all(torch.equal(whole[key][k], resumed[key][k]) for k in whole[key]), key


def test_a_checkpoint_without_the_second_network_is_refused(tiny_config, tmp_path):
    out = tmp_path / "cps"
    cli.main(["--config", tiny_config, *RUN, "train.epochs=1", f"out_dir={out}"])
    state = torch.load(out / "last.pt", weights_only=False)
    state["peer"] = None
    save_atomic(state, str(out / "last.pt"))
    with pytest.raises(SystemExit, match="does not hold this run's training state"):
        cli.main(["--resume", str(out), "train.progress=false"])


def test_a_method_with_three_networks_is_refused(tiny_config, tmp_path):
    class Three(get("cps")):
        name, description = "three_networks", "three networks"
        networks = 3

    register(Three)
    with pytest.raises(ValueError, match="Method.networks expected 1 or 2, got 3"):
        Trainer(load_config(tiny_config, ["method=three_networks", f"out_dir={tmp_path}"]))
