import os
import subprocess
import sys

TINY = {
    "data": {
        "synthetic_train": 24,
        "synthetic_val": 6,
        "image_size": 32,
        "crop_size": 32,
        "batch_size": 2,
        "unlabeled_batch_size": 2,
        "labeled_fraction": 0.25,
        "scale_range": [0.75, 1.25],
    },
    "model": {"kwargs": {"width": 8, "rep_dim": 16}},
    "optim": {"warmup_steps": 2},
    "train": {"epochs": 2, "eval_every": 6, "checkpoint_every": 3, "grid_images": 2},
    "semi": {
        "fixmatch": {"threshold": 0.0},
        "unimatch": {"threshold": 0.0},
        "u2pl": {"num_queries": 8, "num_negatives": 4, "bank_capacity": 64, "sup_only_epochs": 1},
    },
    "eval": {"batch_size": 4},
}


def run_module(module, *args, env=None, timeout=600):
    """Runs ``python -m module args`` in a fresh process (one thread: like a CI worker slot). A
    crash in native code prints every thread's Python stack (PYTHONFAULTHANDLER), so that a rare
    abort leaves a trace in the test's output."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", **(env or {}))
    full_env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


class Killed(Exception):
    """Raised by :func:`train_killed_after`'s run in place of a kill."""


def train_killed_after(steps, args, monkeypatch):
    """Runs ``semiseg_fast.train``'s CLI with ``args`` in this process and stops it, as a kill would,
    once ``steps`` optimizer steps are taken (what is on disk then is the last checkpoint's)."""
    import pytest

    from semiseg_fast.train import cli, progress

    real_update = progress.ProgressBar.update

    def update(bar, n=1, images=0):
        real_update(bar, n, images)
        if bar.count >= steps:
            raise Killed

    monkeypatch.setattr(progress.ProgressBar, "update", update)
    try:
        with pytest.raises(Killed):
            cli.main(args)
    finally:
        monkeypatch.undo()


def whole_and_resumed(run, tmp_path, monkeypatch, steps=4):
    """The last checkpoints of the run ``run`` (CLI arguments) made whole and made killed after
    ``steps`` steps then resumed, in ``tmp_path``/whole and ``tmp_path``/killed."""
    import torch

    from semiseg_fast.train import cli

    cli.main([*run, f"out_dir={tmp_path / 'whole'}"])
    train_killed_after(steps, [*run, f"out_dir={tmp_path / 'killed'}"], monkeypatch)
    cli.main(["--resume", str(tmp_path / "killed"), "train.progress=false"])
    load = lambda name: torch.load(tmp_path / name / "last.pt", weights_only=False)  # noqa: E731
    return load("whole"), load("killed")
