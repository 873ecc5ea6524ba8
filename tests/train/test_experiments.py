"""The experiment runner's scheduling, with the training and pseudo-labelling processes faked."""

import collections
import os
import re
import threading
import time

import pytest
import yaml

from semiseg_fast import experiments
from semiseg_fast.train.config import load_config


def _fake_processes(monkeypatch):
    """Replaces the subprocesses: records each command, takes a little time, leaves what the real
    one would (metrics.csv with an evaluated row, or a pseudo-label manifest)."""
    commands = collections.defaultdict(list)
    lock = threading.Lock()

    def run(cmd, log, append=False):
        out = next((c.split("=", 1)[1] for c in cmd if c.startswith("out_dir=")), None)
        folder = out or cmd[cmd.index("--out") + 1]
        with lock:
            commands[os.path.basename(folder)].append(cmd)
        time.sleep(0.1)  # long enough for runs of the pool to overlap
        os.makedirs(folder, exist_ok=True)
        name = "metrics.csv" if out else "manifest.json"
        with open(os.path.join(folder, name), "w") as f:
            f.write("step,miou\n7,0.5\n" if out else "{}")
        return 1.0

    monkeypatch.setattr(experiments, "_run", run)
    return commands


def test_shared_teacher_and_pseudo_labels_are_made_once(tmp_path, monkeypatch):
    commands = _fake_processes(monkeypatch)
    results = experiments.run_all(
        str(tmp_path),
        [0.125],
        [0],
        ["supervised", "selftrain"],
        ["supervised", "selftrain"],
        [],
        jobs=2,
        schedule_epochs=5,
    )
    assert {name: len(c) for name, c in commands.items() if len(c) > 1} == {}
    assert sorted(commands) == [
        "pseudo-f0.125-s0",
        "pseudo-f0.125-s0-e5",
        "selftrain-f0.125-s0-fast2x-e5",
        "selftrain-f0.125-s0-standard",
        "selftrain-f0.125-s0-standard-e5",
        "supervised-f0.125-s0-fast2x-e5",
        "supervised-f0.125-s0-standard",
        "supervised-f0.125-s0-standard-e5",
    ]
    assert len(results) == 6 and sum(r["timed"] for r in results) == 4
    # the comparison's runs train for its budget, and their students learn from its teacher
    for name in ("selftrain-f0.125-s0-fast2x-e5", "supervised-f0.125-s0-standard-e5"):
        assert commands[name][0][-1] == "train.epochs=5", name
    assert not any("train.epochs=5" in commands[n][0] for n in commands if not n.endswith("-e5"))
    assert any(c.endswith("pseudo-f0.125-s0-e5") for c in commands["selftrain-f0.125-s0-fast2x-e5"][0])
    assert str(tmp_path / "supervised-f0.125-s0-standard-e5" / "last.pt") in commands["pseudo-f0.125-s0-e5"][0]


def test_an_interrupted_run_is_resumed(tmp_path, monkeypatch):
    commands = _fake_processes(monkeypatch)
    interrupted = tmp_path / "supervised-f0.125-s0-standard"
    interrupted.mkdir()
    (interrupted / "last.pt").write_bytes(b"")
    experiments.run_all(str(tmp_path), [0.125], [0, 1], ["supervised"], [], [], jobs=1, schedule_epochs=48)
    (cmd,) = commands["supervised-f0.125-s0-standard"]
    assert cmd[-2:] == ["--resume", str(interrupted)]
    assert "--resume" not in commands["supervised-f0.125-s1-standard"][0]
    assert experiments.train_run(str(tmp_path), "supervised-f0.125-s0-standard", [])["resumed"] is True


def test_a_folder_of_other_settings_is_refused(tmp_path, monkeypatch):
    _fake_processes(monkeypatch)
    run = tmp_path / "supervised-f0.125-s0-fast2x"
    run.mkdir()
    overrides = ["method=supervised", "data.labeled_fraction=0.125", "seed=0", "train.schedule=fast2x"]
    old = load_config(None, [*overrides, f"out_dir={run}"])
    for key in ("full_res_lr", "low_res_batch", "low_res_lr"):  # written before these keys existed
        del old["train"]["fast2x"][key]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "result.json").write_text('{"miou": 30.0, "seconds": 1.0}')
    with pytest.raises(
        RuntimeError,
        match="other settings of train.fast2x.low_res_batch, train.fast2x.low_res_lr, train.fast2x.full_res_lr",
    ):
        experiments.train_run(str(tmp_path), run.name, overrides)
    old["train"]["fast2x"].update(full_res_lr=1.0, low_res_batch=2, low_res_lr=0.5)  # today's settings: reused
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    assert experiments.train_run(str(tmp_path), run.name, overrides)["miou"] == 30.0


@pytest.mark.parametrize(
    "methods, fast2x_methods, timed_methods",
    [
        (["supervised", "selftrain", "fixmatch"], ["supervised", "selftrain"], ("supervised", "selftrain")),
        (["selftrain", "supervised", "fixmatch"], ["supervised"], ("supervised",)),
        # the timed selftrain runs' teacher is trained alone too, even when supervised is not compared
        (["selftrain", "supervised"], ["selftrain"], ("selftrain",)),
    ],
)
def test_timed_runs_run_alone(tmp_path, monkeypatch, methods, fast2x_methods, timed_methods):
    spans, commands = {}, {}
    _fake_processes(monkeypatch)
    real = experiments._run

    def run(cmd, log, append=False):
        start = time.perf_counter()
        seconds = real(cmd, log, append)
        out = next((c.split("=", 1)[1] for c in cmd if c.startswith("out_dir=")), None)
        name = os.path.basename(out or cmd[cmd.index("--out") + 1])
        spans[name], commands[name] = (start, time.perf_counter()), cmd
        return seconds

    monkeypatch.setattr(experiments, "_run", run)
    experiments.run_all(str(tmp_path), [0.125, 0.25], [0, 1], methods, fast2x_methods, [], jobs=2, schedule_epochs=48)
    timed = [n for n in spans if n.endswith("-e48")]
    assert sorted({n.split("-")[0] for n in timed if "fast2x" in n}) == sorted(timed_methods)
    for name in timed:
        a0, a1 = spans[name]
        assert all(b1 <= a0 or a1 <= b0 for other, (b0, b1) in spans.items() if other != name), name
    # the comparison's standard and fast2x runs of 2 seeds, with the selftrain runs' teacher (unless
    # supervised is compared too) and its pseudo-labels; at the default budget every method at
    # 2 fractions x 2 seeds and the pseudo-labels of their teachers
    teacher = 2 * ("selftrain" in timed_methods) * (1 + ("supervised" not in timed_methods))
    assert len(timed) == 4 * len(timed_methods) + teacher
    assert len(spans) == len(timed) + 4 * len(methods) + 4
    for name in timed:  # the timed runs prepare their batches in a worker (the pseudo-labelling does not)
        assert ("data.num_workers=1" in commands[name]) != name.startswith("pseudo"), name
    assert not any("data.num_workers=1" in commands[n] for n in spans if n not in timed)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nope"], "--methods: expected names from"),
        (["--fast2x-methods", "nope"], "--fast2x-methods: expected names from"),
        (["--fractions", "1.5"], "--fractions: expected fractions in"),
        (["--schedule-epochs", "0"], "--schedule-epochs: expected a positive number"),
        (["--splits", "per-seed", "data.split_seed=-1"], "data.split_seed expected an integer in"),
        (["--splits", "per-seed", "nope.key=1"], "unknown key 'nope'"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, monkeypatch, args, message):
    commands = _fake_processes(monkeypatch)
    with pytest.raises(SystemExit, match=message):
        experiments.main(["--out", str(tmp_path), *args])
    assert not commands


def test_a_seed_named_twice_is_run_once(tmp_path, monkeypatch):
    commands = _fake_processes(monkeypatch)
    experiments.main(
        [
            "--out",
            str(tmp_path),
            "--seeds",
            "0",
            "0",
            "--methods",
            "supervised",
            "supervised",
            "--fast2x-methods",
            "--fractions",
            "0.125",
            "0.125",
        ]
    )
    assert {name: len(c) for name, c in commands.items()} == {"supervised-f0.125-s0-standard": 1, "oracle-s0": 1}


def test_the_schedule_table_takes_the_timed_runs():
    def run(method, schedule, timed, seed, miou, seconds):
        return dict(
            method=method, fraction=0.125, seed=seed, schedule=schedule, timed=timed, miou=miou, seconds=seconds
        )

    results = [
        run("supervised", "standard", False, 0, 40.0, 10.0),
        run("supervised", "standard", False, 1, 42.0, 10.0),
        run("supervised", "standard", True, 1, 52.0, 200.0),
        run("supervised", "standard", True, 0, 50.0, 100.0),
        run("supervised", "fast2x", True, 0, 49.0, 50.0),
        run("supervised", "fast2x", True, 1, 50.0, 100.0),
    ]
    summary = experiments.summarize(results, [0.125], ["supervised"], ["supervised"])
    assert summary["table"][("supervised", 0.125)] == dict(seeds=[40.0, 42.0], mean=41.0, gap_closed=None)
    assert summary["schedules"]["supervised"] == dict(
        standard=dict(seeds=[50.0, 52.0], miou=51.0, seconds=150.0),
        fast2x=dict(seeds=[49.0, 50.0], miou=49.5, seconds=75.0),
    )
    text = experiments.markdown(summary, [0.125], ["supervised"], 48, "cmd")
    assert "| supervised | 40.00 / 42.00 | 41.00 | - |" in text
    assert "| supervised | 50.00 / 52.00 | 51.00 | 49.00 / 50.00 | 49.50 | -1.50 | 150 | 75 | 2.00x |" in text
    assert "48 passes over the unlabeled pool (`train.epochs=48`" in text


def test_the_oracle_trains_on_every_image_for_the_first_fractions_steps(tmp_path, monkeypatch):
    commands = _fake_processes(monkeypatch)  # the fake runs end at step 7
    results = experiments.run_all(
        str(tmp_path), [0.125, 0.25], [0, 1], ["fixmatch"], [], [], jobs=2, schedule_epochs=16, oracle=True
    )
    for seed in (0, 1):
        (cmd,) = commands[f"oracle-s{seed}"]
        assert {"data.labeled_fraction=1.0", f"seed={seed}", "method=supervised", "train.steps=7"} <= set(cmd)
        assert len(commands[f"supervised-f0.125-s{seed}-standard"]) == 1  # the run whose steps it takes
    assert "supervised-f0.25-s0-standard" not in commands
    assert sorted(r["method"] for r in results) == ["fixmatch"] * 4 + ["oracle"] * 2 + ["supervised"] * 0


def test_gap_closed_is_the_share_of_the_supervised_to_oracle_gap():
    def run(method, seed, miou, fraction=0.125):
        return dict(method=method, fraction=fraction, seed=seed, schedule="standard", timed=False, miou=miou)

    results = [run("supervised", 0, 40.0), run("supervised", 1, 42.0), run("fixmatch", 0, 45.0)]
    results += [run("fixmatch", 1, 47.0), run("oracle", 0, 50.0, 1.0), run("oracle", 1, 52.0, 1.0)]
    summary = experiments.summarize(results, [0.125], ["supervised", "fixmatch"], [])
    assert summary["oracle"] == dict(seeds=[50.0, 52.0], mean=51.0)
    assert summary["table"][("fixmatch", 0.125)]["gap_closed"] == pytest.approx(0.5)
    text = experiments.markdown(summary, [0.125], ["supervised", "fixmatch"], 16, "cmd")
    assert "| fixmatch | 45.00 / 47.00 | 46.00 | 50% |" in text and "50.00 / 52.00, mean 51.00" in text


@pytest.mark.parametrize(
    "args, splits",
    [
        ([], {0: None, 1: None}),  # shared: the config's, for every seed
        (["--splits", "per-seed"], {0: 2024, 1: 2025}),  # from the default: seed 0 has a default run's labels
        (["--splits", "per-seed", "data.split_seed=7"], {0: 7, 1: 8}),  # from the user's
    ],
)
def test_each_seed_draws_its_labeled_images(tmp_path, monkeypatch, args, splits):
    commands = _fake_processes(monkeypatch)
    experiments.main(
        [*args, "--out", str(tmp_path), "--seeds", "0", "1", "--methods", "supervised", "selftrain"]
        + ["--fast2x-methods", "--fractions", "0.125"]
    )
    for name, cmds in commands.items():
        if name.startswith("oracle"):  # labels every image: no draw to vary
            continue
        seed = int(re.search(r"-s(\d+)", name).group(1))
        drawn = [c.split("=", 1)[1] for c in cmds[0] if c.startswith("data.split_seed=")]
        expected = [] if splits[seed] is None else [str(splits[seed])]
        assert drawn[-1:] == expected, name  # the last one is the one the run takes
    assert len(commands) == 2 * 4  # per seed: supervised, its pseudo-labels, selftrain, the oracle


def test_the_pseudo_label_curves_take_one_run_per_method(tmp_path):
    def run(method, seed, fraction=0.125, timed=False):
        name = f"{method}-{fraction}-{seed}-{timed}"
        os.makedirs(tmp_path / name)
        (tmp_path / name / "metrics.csv").write_text(f"step,pseudo_coverage\n10,{seed / 10}\n")
        return dict(name=name, method=method, seed=seed, fraction=fraction, timed=timed, schedule="standard")

    results = [run(m, s) for m in ("supervised", "fixmatch", "oracle") for s in (0, 1)]
    results += [run("fixmatch", 0, fraction=0.25), run("supervised", 0, timed=True)]
    runs = experiments.pseudo_label_runs(str(tmp_path), results, 0.125, 1)
    assert sorted(runs) == ["fixmatch", "supervised"]
    assert runs["fixmatch"] == [{"step": 10.0, "pseudo_coverage": 0.1}]
