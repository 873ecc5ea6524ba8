"""``python -m semiseg_fast.experiments [--quick] [--out DIR] [--jobs N] [--schedule-epochs E]``

Reproduces, on the embedded dataset, the comparison of the methods (``--methods``: supervised,
selftrain, fixmatch, unimatch, u2pl, pseudoseg) at the labeled fractions (``--fractions``, by
default 1/8 and 1/4; mean of three seeds) at the default budget, against the oracle (every
training image labeled, the steps of the first fraction's supervised run) with the share of the
supervised-to-oracle gap each closes; and the standard schedule against fast2x at the first
fraction (``--schedule-epochs``, by default the same 16 passes; validation mIoU and wall-clock).
Every seed learns from the same labeled images (``--splits shared``, the default), or each seed
from its own (``--splits per-seed``: ``data.split_seed`` = its value + the seed, so that seed 0
has the labeled images a run with the same settings has): which images are labeled can move a
method's mIoU as much as the method does.
The selftrain students learn
from the standard supervised run of their fraction, seed and budget (standard and fast2x alike):
its checkpoint is pseudo-labelled once (``python -m semiseg_fast.pseudo_label``, scales 0.75 / 1 /
1.25 and flips).
Each run is a separate ``python -m semiseg_fast.train`` process with one thread; ``--jobs`` of
them run at once (one (fraction, seed) each, its runs in turn: selftrain after its teacher), and
a teacher and its pseudo-labels are made once for all the runs that need them. The runs whose
wall-clock the schedule comparison reports (standard and fast2x of ``--fast2x-methods``) run
afterwards, one at a time, with ``data.num_workers=1`` (the same batches, prepared off the
training thread by a worker process per data stream).
Finished runs (a ``result.json`` in their folder) are reused and interrupted ones resumed from
their ``last.pt``, so an interrupted experiment continues where it stopped. Writes
``DIR/results.json``, ``DIR/table.md``, ``DIR/plot.png`` and ``DIR/pseudo_labels.png`` (the
pseudo-label quality curves of the first fraction's and seed's run of each method).

``--quick`` shrinks everything (tiny images, model and budget) to check the pipeline in a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from .utils.atomic import atomic_open

PSEUDO_LABEL_SCALES = (0.75, 1.0, 1.25)  # the teacher's multi-scale + flip inference
# train.amp=auto would pick bf16 on CPUs with native bf16 and fp32 elsewhere, and the figures with
# it; fp32 everywhere keeps them comparable across machines (a later override still wins)
FP32 = "train.amp=off"

QUICK_OVERRIDES = [
    "data.synthetic_train=24",
    "data.synthetic_val=6",
    "data.image_size=32",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "model.kwargs={width: 8, rep_dim: 16}",
    "optim.warmup_steps=2",
    "train.epochs=1",
    "train.eval_every=1000",
    "train.checkpoint_every=1000",
    "semi.u2pl.num_queries=8",
    "semi.u2pl.num_negatives=4",
    "semi.u2pl.bank_capacity=64",
]


METHODS = ("supervised", "selftrain", "fixmatch", "unimatch", "u2pl", "pseudoseg")
# the schedule comparison's budget (train.epochs): the default budget, the one users run
SCHEDULE_EPOCHS, QUICK_SCHEDULE_EPOCHS = 16, 2

# the timed runs (one at a time) augment their batches in worker processes (one per data
# stream), off the training thread
TIMED_OVERRIDES = ["data.num_workers=1"]


def _write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _run(cmd: list[str], log: str, append: bool = False) -> float:
    """Runs a command with one thread, its output to ``log``; returns the wall-clock seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    with open(log, "a" if append else "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed with status {code}; log {log}:\n{tail}")
    return time.perf_counter() - start


def _final_row(run_dir: str) -> tuple[float, int]:
    """(mIoU in %, step) of the run's last evaluation."""
    from .train.metrics_csv import read_csv

    rows = [r for r in read_csv(os.path.join(run_dir, "metrics.csv")) if r.get("miou") == r.get("miou")]
    if not rows:
        raise RuntimeError(f"{run_dir}: no evaluated step in metrics.csv")
    return 100.0 * rows[-1]["miou"], int(rows[-1]["step"])


def _check_same_settings(run_dir: str, overrides: Sequence[str]) -> None:
    """A run folder that is reused or resumed must hold a run of these settings (a folder of an
    earlier version's defaults would otherwise mix its figures into the table)."""
    from .train.config import config_from_checkpoint, load_config, resume_conflicts

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = config_from_checkpoint({"config": yaml.safe_load(f)})
    keys = resume_conflicts(saved, load_config(None, [*overrides, f"out_dir={run_dir}"]))
    if keys:
        raise RuntimeError(
            f"{run_dir} holds a run with other settings of {', '.join(keys)}; remove it or choose another --out"
        )


def train_run(out: str, name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """One training run in ``out/name``: reused if it already finished, resumed from its
    ``last.pt`` if it was interrupted (``seconds`` then counts the resumed part only)."""
    run_dir = os.path.join(out, name)
    result_path = os.path.join(run_dir, "result.json")
    _check_same_settings(run_dir, overrides)
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    resumed = os.path.isfile(os.path.join(run_dir, "last.pt"))
    cmd = [sys.executable, "-m", "semiseg_fast.train", "train.progress=false", f"out_dir={run_dir}", *overrides]
    if resumed:
        cmd += ["--resume", run_dir]
    seconds = _run(cmd, os.path.join(run_dir, "log.txt"), append=resumed)
    miou, steps = _final_row(run_dir)
    result = {
        "name": name,
        "overrides": list(overrides),
        "miou": miou,
        "steps": steps,
        "seconds": seconds,
        "resumed": resumed,
    }
    _write_text(result_path, json.dumps(result))
    return result


def pseudo_label_run(out: str, name: str, teacher_dir: str, base: Sequence[str]) -> str:
    """The teacher's pseudo-labels in ``out/name`` (made once; an interrupted run continues)."""
    folder = os.path.join(out, name)
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        data = [o for o in base if o.startswith("data.")]
        _run(
            [
                sys.executable,
                "-m",
                "semiseg_fast.pseudo_label",
                "--checkpoint",
                os.path.join(teacher_dir, "last.pt"),
                "--out",
                folder,
                "--scales",
                *map(str, PSEUDO_LABEL_SCALES),
                "--flip",
                "--no-progress",
                *data,
            ],
            os.path.join(out, name + ".log"),
        )
    return folder


def run_all(
    out: str,
    fractions: Sequence[float],
    seeds: Sequence[int],
    methods: Sequence[str],
    fast2x_methods: Sequence[str],
    base: Sequence[str],
    jobs: int,
    schedule_epochs: int,
    oracle: bool = False,
    split_base: int | None = None,
) -> list[dict[str, Any]]:
    """The method table's runs at the budget of ``base``, with ``oracle`` supervised training on
    every training image for the steps of the first fraction's supervised run, then the schedule
    comparison's (standard and fast2x of ``fast2x_methods`` at the first fraction,
    ``schedule_epochs`` passes) one at a time; each result says which (``timed``). With
    ``split_base``, seed s draws its labeled images with ``data.split_seed`` = split_base + s."""
    os.makedirs(out, exist_ok=True)

    def one_seed(
        fraction: float, seed: int, schedule: str, wanted: Sequence[str], timed: bool = False
    ) -> list[dict[str, Any]]:
        # the timed runs augment their batches in a worker (before `base`: a user's own value
        # wins) and train for the comparison's budget (after it: the comparison's budget wins)
        first, last = (TIMED_OVERRIDES, [f"train.epochs={schedule_epochs}"]) if timed else ([], [])
        suffix = f"-e{schedule_epochs}" if timed else ""
        settings = [*base, f"data.labeled_fraction={fraction}", f"seed={seed}"]
        if split_base is not None:
            settings.append(f"data.split_seed={split_base + seed}")
        tag = f"f{fraction:g}-s{seed}"

        def run(method: str, kind: str, *extra: str) -> dict[str, Any]:  # kind: the run's schedule
            return train_run(
                out,
                f"{method}-{tag}-{kind}{suffix}",
                [*first, *settings, f"train.schedule={kind}", f"method={method}", *extra, *last],
            )

        results = []
        for m in wanted:
            extra = []
            if m == "selftrain":  # the teacher: the task's own standard supervised run
                teacher = run("supervised", "standard")["name"]
                pl = pseudo_label_run(out, f"pseudo-{tag}{suffix}", os.path.join(out, teacher), settings)
                extra.append(f"semi.selftrain.pseudo_dir={pl}")
            results.append(
                dict(run(m, schedule, *extra), method=m, fraction=fraction, seed=seed, schedule=schedule, timed=timed)
            )
        if oracle and not timed and fraction == fractions[0]:
            sup = run("supervised", "standard")  # a result written before results had steps: its metrics
            steps = sup.get("steps") or _final_row(os.path.join(out, sup["name"]))[1]
            all_labels = [
                *base,
                "data.labeled_fraction=1.0",
                f"seed={seed}",
                "method=supervised",
                f"train.steps={steps}",
            ]
            result = train_run(out, f"oracle-s{seed}", all_labels)
            results.append(dict(result, method="oracle", fraction=1.0, seed=seed, schedule="standard", timed=False))
        return results

    # the schedule comparison's runs are timed: they run one at a time, after the others, so that
    # no run shares the processor's caches and memory bandwidth with another of another kind;
    # data worker processes prepare their batches on the core that is free then. The timed
    # supervised run is also the timed selftrain runs' teacher, trained once for both.
    shared = [(f, s, "standard", list(methods)) for f in fractions for s in seeds]
    alone = (
        [(fractions[0], s, schedule, list(fast2x_methods)) for s in seeds for schedule in ("standard", "fast2x")]
        if fast2x_methods
        else []
    )
    with ThreadPoolExecutor(jobs) as pool:
        chunks = list(pool.map(lambda t: one_seed(*t), shared))
    chunks += [one_seed(*task, timed=True) for task in alone]
    return [r for chunk in chunks for r in chunk]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    results: list[dict[str, Any]], fractions: Sequence[float], methods: Sequence[str], fast2x_methods: Sequence[str]
) -> dict[str, Any]:
    def pick(method, fraction, schedule, timed=False):
        return sorted(
            (
                r
                for r in results
                if r["method"] == method
                and r["fraction"] == fraction
                and r["schedule"] == schedule
                and r["timed"] == timed
            ),
            key=lambda r: r["seed"],
        )

    oracle_runs = pick("oracle", 1.0, "standard")
    oracle = dict(seeds=[r["miou"] for r in oracle_runs], mean=_mean([r["miou"] for r in oracle_runs]))
    table = {}
    for m in methods:
        for f in fractions:
            rs = pick(m, f, "standard")
            table[(m, f)] = dict(seeds=[r["miou"] for r in rs], mean=_mean([r["miou"] for r in rs]))
    for (m, f), t in table.items():  # the share of the supervised-to-oracle gap a method closes
        sup = table.get(("supervised", f), {}).get("mean")
        known = None not in (t["mean"], sup, oracle["mean"]) and m != "supervised" and oracle["mean"] != sup
        t["gap_closed"] = (t["mean"] - sup) / (oracle["mean"] - sup) if known else None
    schedules = {}
    for m in fast2x_methods:
        runs = {k: pick(m, fractions[0], k, timed=True) for k in ("standard", "fast2x")}
        schedules[m] = {
            k: dict(
                seeds=[r["miou"] for r in rs],
                miou=_mean([r["miou"] for r in rs]),
                seconds=_mean([r["seconds"] for r in rs]),
            )
            for k, rs in runs.items()
        }
    return dict(table=table, oracle=oracle, schedules=schedules)


def _seeds(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def markdown(
    summary: dict[str, Any], fractions: Sequence[float], methods: Sequence[str], schedule_epochs: int, command: str
) -> str:
    lines = [
        "| method | " + " | ".join(f"1/{round(1 / f)} labeled (seeds) | mean | gap closed" for f in fractions) + " |",
        "|---|" + "---:|---:|---:|" * len(fractions),
    ]
    for m in methods:
        cells = []
        for f in fractions:
            t = summary["table"][(m, f)]
            closed = t["gap_closed"]
            cells += [
                _seeds(t["seeds"]) or "-",
                f"{t['mean']:.2f}" if t["mean"] is not None else "-",
                f"{100 * closed:.0f}%" if closed is not None else "-",
            ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    oracle = summary["oracle"]
    if oracle["mean"] is not None:
        lines += [
            "",
            f"Oracle (every training image labeled, the steps of the 1/{round(1 / fractions[0])} supervised run): "
            f"{_seeds(oracle['seeds'])}, mean {oracle['mean']:.2f}. Gap closed: (method - supervised) / "
            "(oracle - supervised), of the means.",
        ]
    if summary["schedules"]:
        lines += [
            "",
            f"Schedules at 1/{round(1 / fractions[0])} labeled, {schedule_epochs} passes over the "
            f"unlabeled pool (`train.epochs={schedule_epochs}`; wall-clock of the training process, one thread, "
            "a data worker, run alone; mean of the seeds):",
            "",
            "| method | standard (seeds) | mean | fast2x (seeds) | mean | difference | standard s | fast2x s "
            "| speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m, s in summary["schedules"].items():
            std, fast = s["standard"], s["fast2x"]
            if std["miou"] is None or fast["miou"] is None:
                continue
            lines.append(
                f"| {m} | {_seeds(std['seeds'])} | {std['miou']:.2f} | {_seeds(fast['seeds'])} | "
                f"{fast['miou']:.2f} | {fast['miou'] - std['miou']:+.2f} | {std['seconds']:.0f} | "
                f"{fast['seconds']:.0f} | {std['seconds'] / fast['seconds']:.2f}x |"
            )
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def plot(
    path: str, summary: dict[str, Any], fractions: Sequence[float], methods: Sequence[str], schedule_epochs: int
) -> None:
    from .train.figures import save_bars

    names = [f"1/{round(1 / f)}" for f in fractions]
    values = {(m, n): summary["table"][(m, f)]["mean"] for m in methods for f, n in zip(fractions, names)}
    groups = list(methods)
    if summary["oracle"]["mean"] is not None:  # one value, drawn beside each fraction's bars
        groups.append("oracle")
        values.update({("oracle", n): summary["oracle"]["mean"] for n in names})
    panels = [dict(title="validation mIoU (mean of seeds)", groups=groups, series=names, values=values)]
    if summary["schedules"]:
        sched = summary["schedules"]
        for what, title in (("miou", "mIoU"), ("seconds", "wall-clock s")):
            panels.append(
                dict(
                    title=f"standard vs fast2x, {schedule_epochs} passes: {title}",
                    groups=list(sched),
                    series=["standard", "fast2x"],
                    values={(m, k): sched[m][k][what] for m in sched for k in ("standard", "fast2x")},
                )
            )
    save_bars(path, panels)


def pseudo_label_runs(
    out: str, results: list[dict[str, Any]], fraction: float, seed: int
) -> dict[str, list[dict[str, float]]]:
    """The metrics rows of one run per method: the method table's run at ``fraction`` and ``seed``
    (not the oracle, not the timed comparison's)."""
    from .train.metrics_csv import read_csv

    return {
        r["method"]: read_csv(os.path.join(out, r["name"], "metrics.csv"))
        for r in results
        if r["fraction"] == fraction and r["seed"] == seed and not r["timed"] and r["method"] != "oracle"
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg_fast.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/experiments")
    parser.add_argument("--quick", action="store_true", help="tiny data, model and budget (for tests)")
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.125, 0.25], help="labeled fractions; fast2x runs at the first"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--no-oracle",
        dest="oracle",
        action="store_false",
        help="leave out the oracle: supervised on every training image for the first fraction's steps",
    )
    parser.add_argument(
        "--fast2x-methods",
        nargs="*",
        default=["supervised", "selftrain"],
        help="methods of the schedule comparison: trained with the standard and the fast2x "
        "schedule at the first fraction over --schedule-epochs, timed",
    )
    parser.add_argument(
        "--schedule-epochs",
        type=int,
        default=None,
        help="the budget (train.epochs) of the schedule comparison's runs: by default "
        f"{SCHEDULE_EPOCHS}, the default budget; {QUICK_SCHEDULE_EPOCHS} with --quick",
    )
    parser.add_argument(
        "--splits",
        choices=("shared", "per-seed"),
        default="shared",
        help="shared: every seed labels the images data.split_seed draws; per-seed: seed s those "
        "data.split_seed + s draws",
    )
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key.sub=value for every run, e.g. optim.lr=0.004 "
        "(train.epochs sets the method table's budget; the comparison's is --schedule-epochs)",
    )
    args = parser.parse_intermixed_args(argv)
    from .train import methods as registry

    for option, names in (("--methods", args.methods), ("--fast2x-methods", args.fast2x_methods)):
        for m in names:
            if m not in registry.names():
                sys.exit(f"error: {option}: expected names from {', '.join(registry.names())}, got {m!r}")
    if any(not 0 < f < 1 for f in args.fractions):
        sys.exit(f"error: --fractions: expected fractions in (0, 1), got {args.fractions}")
    if args.jobs < 1:
        sys.exit(f"error: --jobs: expected a positive number of processes, got {args.jobs}")
    if any(seed < 0 for seed in args.seeds):
        sys.exit(f"error: --seeds: expected integers >= 0, got {args.seeds}")
    if args.schedule_epochs is not None and args.schedule_epochs < 1:
        sys.exit(f"error: --schedule-epochs: expected a positive number of epochs, got {args.schedule_epochs}")
    epochs = args.schedule_epochs or (QUICK_SCHEDULE_EPOCHS if args.quick else SCHEDULE_EPOCHS)
    # a fraction or seed named twice would have two tasks train into the same folders at once
    fractions, seeds, methods, fast2x_methods = (
        list(dict.fromkeys(v)) for v in (args.fractions, args.seeds, args.methods, args.fast2x_methods)
    )
    base = [FP32] + (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    split_base = None
    if args.splits == "per-seed":  # from the split_seed every run would have (a user's override wins)
        from .train.config import load_config

        try:
            split_base = int(load_config(None, base)["data"]["split_seed"])
        except (KeyError, ValueError) as e:
            sys.exit(f"error: {e.args[0]}")
    try:
        results = run_all(
            args.out, fractions, seeds, methods, fast2x_methods, base, args.jobs, epochs, args.oracle, split_base
        )
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    summary = summarize(results, fractions, methods, fast2x_methods)
    command = "python -m semiseg_fast.experiments " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(summary, fractions, methods, epochs, command.strip())
    _write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    _write_text(os.path.join(args.out, "table.md"), text)
    plot(os.path.join(args.out, "plot.png"), summary, fractions, methods, epochs)
    from .train.figures import save_pseudo_label_curves

    runs = pseudo_label_runs(args.out, results, fractions[0], seeds[0])
    save_pseudo_label_curves(os.path.join(args.out, "pseudo_labels.png"), runs)
    print(text)


if __name__ == "__main__":
    main()
