"""End to end: the training and evaluation CLIs on a tiny configuration, under torchrun with two
gloo processes, and a run killed mid-way then resumed."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from .helpers import run_module

RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "predictions.png", "curves.png")


def _train(tiny_config, out_dir, *overrides, module="semiseg_fast.train"):
    result = run_module(module, "--config", tiny_config, f"out_dir={out_dir}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _rows(out_dir):
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["supervised", "fixmatch", "u2pl", "pseudoseg", "unimatch", "cps"])
def test_train_then_eval(tiny_config, tmp_path, method):
    out = tmp_path / method
    result = _train(tiny_config, out, f"method={method}")
    assert "mIoU" in result.stdout and "background" in result.stdout
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert Image.open(out / "predictions.png").size[0] > 0
    rows = _rows(out)
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 18  # 18 unlabeled images / 2 per step * 2 epochs
    assert all(float(r["loss"]) > 0 for r in rows)
    assert sum(r["miou"] != "" for r in rows) == 3  # steps 6, 12, 18
    if method != "supervised":
        assert any(float(r["mask_ratio"]) > 0 for r in rows)
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 18 and (state["teacher"] is None) == (method in ("supervised", "unimatch"))

    evaluated = run_module(
        "semiseg_fast.eval", "--checkpoint", str(out / "best.pt"), "--mode", "slide", "--window", "24", "--stride", "16"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "mIoU" in evaluated.stdout


def test_torchrun_two_processes(tiny_config, tmp_path):
    out = tmp_path / "ddp"
    result = run_module(
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "semiseg_fast.train",
        "--config",
        tiny_config,
        f"out_dir={out}",
        "method=u2pl",
        "semi.u2pl.sup_only_epochs=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("mIoU") == 1  # only rank 0 reports and writes
    rows = _rows(out)
    assert int(rows[-1]["step"]) == 10  # 18 unlabeled images / (2 per process * 2 processes), rounded up, * 2 epochs
    evaluated = [r for r in rows if r["miou"]]
    assert evaluated and all(0 <= float(r["pseudo_coverage"]) <= 1 for r in evaluated)  # summed over both ranks
    state = torch.load(out / "last.pt", weights_only=False)
    assert int(state["criterion"]["bank.length"].sum()) > 0  # the contrastive term ran and filled the bank


def _weights(path):
    state = torch.load(path, weights_only=False)
    return {
        **{f"model.{k}": v for k, v in state["model"].items()},
        **{f"teacher.{k}": v for k, v in state["teacher"].items()},
    }


@pytest.mark.parametrize("method", ["fixmatch", "u2pl"])
def test_killed_run_resumes_to_the_same_weights(tiny_config, tmp_path, method):
    common = [f"method={method}", "deterministic=true", "train.epochs=6", "train.checkpoint_every=3"]
    _train(tiny_config, tmp_path / "whole", *common)

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "semiseg_fast.train", "--config", tiny_config, f"out_dir={killed}", *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(killed / "last.pt", weights_only=False)["step"]
    assert 0 < step_at_kill < 54

    _train(tiny_config, killed, *common, "--resume", str(killed))
    whole, resumed = _weights(tmp_path / "whole" / "last.pt"), _weights(killed / "last.pt")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    steps = [int(r["step"]) for r in _rows(killed)]
    assert steps == sorted(set(steps)) and steps[-1] == 54


def test_bad_arguments_exit_with_a_message(tiny_config, tmp_path):
    result = run_module("semiseg_fast.train", "--config", tiny_config, "train.epochz=3")
    assert result.returncode != 0 and "unknown key 'train.epochz'" in result.stderr
    result = run_module("semiseg_fast.train", "data.name=voc", f"data.root={tmp_path}", "data.num_classes=3")
    assert result.returncode != 0 and "labeled.txt" in result.stderr
    result = run_module("semiseg_fast.eval", "--checkpoint", str(tmp_path / "missing.pt"))
    assert result.returncode != 0 and "missing.pt" in result.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = run_module("semiseg_fast.eval", "--checkpoint", str(tmp_path / "junk.pt"))
    assert result.returncode != 0 and "junk.pt" in result.stderr


def test_selftrain_from_offline_pseudo_labels_with_fast2x(tiny_config, tmp_path):
    teacher = tmp_path / "teacher"
    _train(tiny_config, teacher, "method=supervised")
    labels = tmp_path / "pseudo"
    made = run_module(
        "semiseg_fast.pseudo_label",
        "--checkpoint",
        str(teacher / "last.pt"),
        "--out",
        str(labels),
        "--topk",
        "2",
        "--scales",
        "0.75",
        "1",
        "--flip",
        "--no-progress",
    )
    assert made.returncode == 0, made.stderr[-3000:]
    out = tmp_path / "student"
    result = _train(
        tiny_config,
        out,
        "--method",
        "selftrain",
        "--pseudo-dir",
        str(labels),
        "--schedule",
        "fast2x",
        "semi.selftrain.soft=true",
        "semi.selftrain.class_balanced=true",
        "semi.selftrain.threshold=0.2",
    )
    assert "mIoU" in result.stdout
    rows = _rows(out)
    # a budget of 18 batches: 7 steps of 2 batches on 20-pixel crops, then 4 full-size steps
    assert rows[-1]["step"] == "11" and float(rows[-1]["epoch"]) == 2.0
    assert all(float(r["loss_unsup"]) > 0 for r in rows)
    assert all(0 < float(r["pseudo_coverage"]) <= 1 and r["pseudo_miou"] for r in rows if r["miou"])
    saved = (out / "config.yaml").read_text()
    assert "schedule: fast2x" in saved and "soft: true" in saved
    missing = run_module(
        "semiseg_fast.train", "--config", tiny_config, "--method", "selftrain", f"out_dir={tmp_path / 'x'}"
    )
    assert missing.returncode != 0 and "semi.selftrain.pseudo_dir" in missing.stderr


def test_experiments_quick(tmp_path):
    args = [
        "--quick",
        "--out",
        str(tmp_path / "exp"),
        "--seeds",
        "0",
        "--methods",
        "supervised",
        "selftrain",
        "--fast2x-methods",
        "supervised",
    ]
    result = run_module("semiseg_fast.experiments", *args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "exp" / "table.md").read_text()
    assert "| supervised |" in table and "| selftrain |" in table and "speed-up" in table
    assert Image.open(tmp_path / "exp" / "plot.png").size[0] > 0
    assert Image.open(tmp_path / "exp" / "pseudo_labels.png").size[0] > 0
    runs = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert {(r["method"], r["schedule"], r["timed"]) for r in runs} == {
        ("supervised", "standard", False),
        ("selftrain", "standard", False),
        ("supervised", "standard", True),
        ("supervised", "fast2x", True),
        ("oracle", "standard", False),
    }
    assert len(runs) == 7 and all(r["seconds"] > 0 for r in runs)
    oracle = next(r for r in runs if r["method"] == "oracle")
    supervised = next(r for r in runs if r["method"] == "supervised" and not r["timed"])
    assert oracle["steps"] == supervised["steps"] and "data.labeled_fraction=1.0" in oracle["overrides"]
    assert "Oracle (every training image labeled" in table and "gap closed" in table
    assert all((r["overrides"][-1] == "train.epochs=2") == r["timed"] for r in runs)  # the comparison's budget
    assert "2 passes over the unlabeled pool" in table
    assert re.search(
        r"\| supervised \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \| \d+ \| \d+ \| [\d.]+x \|", table
    )
    assert all("train.amp=off" in r["overrides"] for r in runs)  # fp32 whether or not the CPU has native bf16
    again = run_module("semiseg_fast.experiments", *args, timeout=900)  # finished runs are reused
    assert again.returncode == 0 and json.loads((tmp_path / "exp" / "results.json").read_text()) == runs
    one = run_module("semiseg_fast.experiments", *args, "--fractions", "0.125", timeout=900)  # reused as well
    assert one.returncode == 0, one.stderr[-3000:]
    table = (tmp_path / "exp" / "table.md").read_text()
    assert "1/8 labeled" in table and "1/4 labeled" not in table and "speed-up" in table


def test_train_steps_sets_the_budget_in_batches(tiny_config, tmp_path):
    """All labels at the steps of a fractional run: the budget is train.steps, the last epoch partial."""
    out = tmp_path / "all_labels"
    result = _train(tiny_config, out, "method=supervised", "data.labeled_fraction=1.0", "train.steps=17")
    assert "17 steps (2 epochs of 12 batches)" in result.stderr  # 24 images / 2 per step
    assert int(_rows(out)[-1]["step"]) == 17
    refused = run_module("semiseg_fast.train", "--config", tiny_config, "method=u2pl", "train.steps=17")
    assert refused.returncode != 0 and "train.steps" in refused.stderr


def test_rampup_reaches_the_loop(tiny_config, tmp_path):
    """semi.rampup=1: the unsupervised term's weight rises from exp(-5) over the whole run."""
    out = tmp_path / "ramped"
    _train(
        tiny_config, out, "method=u2pl", "semi.u2pl.sup_only_epochs=0", "semi.rampup=1.0", "semi.u2pl.contrastive=false"
    )
    rows = _rows(out)
    weights = [
        (float(r["loss"]) - float(r["loss_sup"])) / float(r["loss_unsup"]) for r in rows if float(r["loss_unsup"]) > 0
    ]
    assert weights[0] < 0.05 and weights == sorted(weights) and weights[-1] > 0.6  # rows average over steps
