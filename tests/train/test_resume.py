"""Resuming continues the checkpoint's own run; a fresh run starts its own metrics; setup errors
of the train and eval CLIs are messages, not tracebacks. In-process, on one tiny trained run."""

import csv
import shutil

import pytest
import torch
import yaml

from semiseg_fast import eval as eval_cli
from semiseg_fast.train import cli, load_config, train
from semiseg_fast.train.checkpoint import save_atomic
from semiseg_fast.train.config import (
    FORMER_DEFAULTS,
    _lookup,
    config_from_checkpoint,
    default_config,
    resume_config,
    resume_conflicts,
)
from semiseg_fast.train.schedule import from_config

from .helpers import TINY, train_killed_after

# 9 steps, evaluated at 6 and 9; bf16 autocast (forced, also on CPUs without native bf16), which
# evaluation must repeat to reproduce the run's mIoU
RUN = ["method=supervised", "seed=1", "train.epochs=1", "train.progress=false", "train.amp=bf16"]


def _steps(folder):
    with open(folder / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _exit_message(argv, main=cli.main):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert isinstance(e.value.code, str), e.value.code  # a message, not a status from a traceback
    return e.value.code


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.fixture(scope="module")
def finished(tiny_yaml, tmp_path_factory):
    """The folder of a finished tiny run (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("finished") / "supervised-seed1"
    cli.main(["--config", tiny_yaml, *RUN, f"out_dir={folder}"])
    return folder


def _copy(finished, tmp_path):
    folder = tmp_path / "runs" / "supervised-seed1"
    shutil.copytree(finished, folder)
    return folder


def test_readme_resume_continues_the_checkpoints_run_in_its_folder(finished, tmp_path, monkeypatch):
    folder = _copy(finished, tmp_path)
    state = torch.load(folder / "last.pt", weights_only=False)
    state["config"]["train"]["epochs"] = 2  # as if a 2-epoch run had been killed at step 9
    save_atomic({k: v for k, v in state.items() if k != "sha256"}, str(folder / "last.pt"))  # digest of the edit
    monkeypatch.chdir(tmp_path)
    cli.main(["--resume", "runs/supervised-seed1", "train.progress=false"])  # no method, seed or data given
    resumed = torch.load(folder / "last.pt", weights_only=False)
    assert resumed["step"] == 18 and resumed["config"]["seed"] == 1 and resumed["config"]["method"] == "supervised"
    assert resumed["config"]["out_dir"] == "runs/supervised-seed1"
    assert _steps(folder) == [6, 9, 10, 12, 18]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["supervised-seed1"]  # nowhere else


def test_a_metrics_csv_from_before_the_pseudo_label_columns_resumes(finished, tmp_path):
    folder = _copy(finished, tmp_path)
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert all(r[c] == "" for r in rows for c in ("pseudo_coverage", "pseudo_accuracy", "pseudo_miou"))  # supervised
    old = list(rows[0])[: list(rows[0]).index("miou") + 1]
    with open(folder / "metrics.csv", "w", newline="") as f:  # as written before the columns after miou existed
        writer = csv.DictWriter(f, old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    state = torch.load(folder / "last.pt", weights_only=False)
    state["config"]["train"]["epochs"] = 2  # as if a 2-epoch run had been killed at step 9
    save_atomic({k: v for k, v in state.items() if k != "sha256"}, str(folder / "last.pt"))
    cli.main(["--resume", str(folder), "train.progress=false"])
    resumed = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [int(r["step"]) for r in resumed] == [6, 9, 10, 12, 18] and list(resumed[0]) == list(rows[0])
    assert [r["miou"] for r in resumed[:2]] == [r["miou"] for r in rows]


def test_resume_refuses_other_settings(finished, tiny_yaml):
    state = torch.load(finished / "last.pt", weights_only=False)
    last = str(finished / "last.pt")
    same = resume_config(state, last, tiny_yaml, [*RUN, f"out_dir={finished}", "train.eval_every=2"])
    assert same["seed"] == 1 and same["train"]["eval_every"] == 2  # repeating the run, adjusting harmless keys
    message = _exit_message(["--resume", str(finished), "seed=2", "train.epochs=3", "optim.lr=0.1"])
    assert "seed: 1 there, 2 here" in message and "train.epochs: 1 there, 3 here" in message and "optim.lr" in message
    message = _exit_message(["--resume", str(finished), f"out_dir={finished.parent / 'elsewhere'}"])
    assert message.startswith("error: out_dir:") and "elsewhere" in message
    config = load_config(tiny_yaml, [*RUN, "seed=2", f"out_dir={finished}"])
    with pytest.raises(ValueError, match="seed: 1 there, 2 here"):
        train(config, resume=str(finished))  # the Python API checks as well


def test_checkpoints_from_before_a_key_existed_resume_with_the_value_they_used(finished):
    state = torch.load(finished / "last.pt", weights_only=False)
    for key in ("full_res_lr", "low_res_batch", "low_res_lr"):  # runs saved before these keys trained without them
        del state["config"]["train"]["fast2x"][key]
    for key in ("depth_weight", "level"):  # DepthMix runs saved before these: no depth task, per-pixel masks
        del state["config"]["semi"]["depthmix"][key]
    for method in ("cps", "rrn"):  # CPS and RRN runs saved before these: CPS's boxes, no colour, its labels
        for key in ("mask", "depth_run", "strong_color", "targets", "depth_weight", "mix_labeled"):
            del state["config"]["semi"][method][key]
    state["config"]["train"]["schedule"] = "fast2x"
    old = resume_config(state, str(finished / "last.pt"))
    assert old["semi"]["depthmix"]["depth_weight"] == 0.0 and old["semi"]["depthmix"]["level"] == "pixel"
    for method in ("cps", "rrn"):
        assert old["semi"][method]["mask"] == "box" and old["semi"][method]["strong_color"] is False
        assert old["semi"][method]["targets"] == "networks" and old["semi"][method]["depth_weight"] == 0.0
        assert old["semi"][method]["mix_labeled"] is False
    assert old["train"]["fast2x"]["full_res_lr"] is None and old["train"]["fast2x"]["low_res_batch"] == 1
    assert old["train"]["fast2x"]["low_res_lr"] is None
    schedule = from_config(old, 18)
    assert schedule.low_res_batch == 1 and schedule.num_steps == 18  # the schedule it was started with
    assert load_config(None, [])["train"]["fast2x"]["low_res_batch"] == 2  # today's default differs
    assert all(_lookup(default_config(), key) != "(unset)" for key in FORMER_DEFAULTS)


def test_other_methods_settings_do_not_conflict():
    """A former default in another method's section (semi.cps.targets, say) changes nothing in this
    run: it must not refuse every run saved before it."""
    for method in ("supervised", "fixmatch", "rrn"):
        saved = load_config(None, [f"method={method}", "semi.cps.targets=networks", "semi.rrn.mask=box"])
        expected = ["semi.rrn.mask"] if method == "rrn" else []
        assert resume_conflicts(saved, load_config(None, [f"method={method}"])) == expected
    saved = load_config(None, ["method=cps", "semi.cps.targets=networks", "semi.teacher=shared"])
    assert resume_conflicts(saved, load_config(None, ["method=cps"])) == ["semi.teacher", "semi.cps.targets"]


def test_fast2x_settings_do_not_conflict_in_a_standard_run(finished, tiny_yaml):
    state = torch.load(finished / "last.pt", weights_only=False)
    saved = config_from_checkpoint(state)
    config = load_config(tiny_yaml, [*RUN, f"out_dir={finished}", "train.fast2x.low_res_batch=3"])
    assert resume_conflicts(saved, config) == []  # the schedule is standard: fast2x's keys change nothing
    config["train"]["schedule"] = "fast2x"
    assert resume_conflicts(saved, config) == ["train.schedule", "train.fast2x.low_res_batch"]


def test_fresh_run_in_a_used_folder_starts_new_metrics(finished, tiny_yaml, tmp_path):
    folder = _copy(finished, tmp_path)
    cli.main(["--config", tiny_yaml, *RUN, f"out_dir={folder}"])
    assert _steps(folder) == [6, 9]


def test_setup_errors_are_messages(finished, tiny_yaml, tmp_path):
    base = ["--config", tiny_yaml, "train.progress=false", f"out_dir={tmp_path / 'x'}"]
    assert "train.amp=fp16" in _exit_message([*base, "device=cpu", "train.amp=fp16"])
    assert "data.labeled_fraction" in _exit_message([*base, "method=fixmatch", "data.labeled_fraction=1"])
    assert "optim.lr" in _exit_message([*base, "optim.lr=-1"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "--resume" in _exit_message(["--resume", str(junk)]) and "junk.pt" in _exit_message(["--resume", str(junk)])
    assert "last.pt" in _exit_message(["--resume", str(tmp_path)])  # a folder without a checkpoint
    if not torch.cuda.is_available():
        assert "device" in _exit_message([*base, "device=cuda"])


def test_eval_checks_window_and_stride(finished):
    best = str(finished / "best.pt")
    assert "--stride" in _exit_message(["--checkpoint", best, "--mode", "slide", "--stride", "0"], eval_cli.main)
    assert "--stride" in _exit_message(["--checkpoint", best, "--window", "16", "--stride", "24"], eval_cli.main)
    assert "--window" in _exit_message(["--checkpoint", best, "--window", "0"], eval_cli.main)
    assert "data.root" in _exit_message(["--checkpoint", best, "data.name=voc"], eval_cli.main)
    missing = ["--checkpoint", best, "data.name=voc", f"data.root={finished}", "data.num_classes=3"]
    assert "labeled.txt" in _exit_message(missing, eval_cli.main)  # data errors: a message too


def test_eval_reproduces_the_stored_miou_under_the_runs_autocast(finished, capsys):
    best = str(finished / "best.pt")
    state = torch.load(best, weights_only=False)
    config = eval_cli.eval_config(state, eval_cli.parse_args(["--checkpoint", best]))
    result, _ = eval_cli.evaluate_checkpoint(state, config, "val", torch.device("cpu"))
    assert result.miou == state["miou"]
    capsys.readouterr()
    eval_cli.main(["--checkpoint", best, "--device", "cpu"])
    assert capsys.readouterr().out.splitlines()[-1].split()[-1] == f"{100 * state['miou']:.2f}"


def test_eval_of_an_fp16_run_on_a_cpu_falls_back_to_fp32():
    assert eval_cli.eval_amp("fp16", torch.device("cpu")) is None


def test_fast2x_with_larger_reduced_batches_resumes_to_the_same_weights(tiny_yaml, tmp_path, monkeypatch):
    # 18 budget steps: 8 steps of 2 x 2 images on 16-pixel crops, then 2 of 2 images at 32 pixels
    run = [
        "method=supervised",
        "deterministic=true",
        "train.epochs=2",
        "train.progress=false",
        "train.amp=off",
        "train.schedule=fast2x",
        "train.fast2x.low_res_batch=2",
        "train.fast2x.low_res_fraction=0.85",
        "train.fast2x.low_res_scale=0.5",
        "train.checkpoint_every=3",
    ]
    cli.main(["--config", tiny_yaml, *run, f"out_dir={tmp_path / 'whole'}"])
    rows = list(csv.DictReader(open(tmp_path / "whole" / "metrics.csv")))
    assert [r["step"] for r in rows] == ["6", "10"] and float(rows[-1]["epoch"]) == 2.0

    # dies after step 5; its last checkpoint is step 3's
    train_killed_after(5, ["--config", tiny_yaml, *run, f"out_dir={tmp_path / 'killed'}"], monkeypatch)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["step"] == 3
    (tmp_path / "killed" / ".tmp-kill9.pt").write_bytes(b"half a checkpoint")  # a write cut short
    cli.main(["--resume", str(tmp_path / "killed"), "train.progress=false"])
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not list((tmp_path / "killed").glob(".tmp-*"))
    # the first row after the resume covers its whole interval (steps 1-6), as the uninterrupted run's
    resumed_rows = list(csv.DictReader(open(tmp_path / "killed" / "metrics.csv")))
    strip = lambda r: {k: v for k, v in r.items() if k != "img_per_s"}
    assert [strip(r) for r in resumed_rows] == [strip(r) for r in rows]
