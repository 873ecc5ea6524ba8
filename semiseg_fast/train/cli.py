"""``python -m semiseg_fast.train [--config FILE] [--resume RUN_DIR_OR_CKPT] [--method M] [--schedule fast2x]
[--pseudo-dir DIR] [key.sub=value ...]``

With no arguments: FixMatch on the embedded synthetic dataset with 1/8 of the images labeled,
a few minutes on a laptop CPU. Under ``torchrun --nproc_per_node=N`` each process trains on its
share of every batch (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import methods
from .config import default_config, dump, load_config, resume_adjustable_keys, resume_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg_fast.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file with any subset of the keys of --print-defaults")
    parser.add_argument(
        "--resume",
        help="continue from a run folder (its last.pt) or a checkpoint file, with the "
        "checkpoint's config, in its folder; other arguments may repeat that config but change "
        f"only {', '.join(resume_adjustable_keys())}",
    )
    parser.add_argument("--print-defaults", action="store_true", help="print the default config and exit")
    parser.add_argument(
        "--list-methods", action="store_true", help="print each registered method with a line about it and exit"
    )
    parser.add_argument("--method", help="same as method=...")
    parser.add_argument("--schedule", choices=["standard", "fast2x"], help="same as train.schedule=...")
    parser.add_argument("--pseudo-dir", help="same as semi.selftrain.pseudo_dir=... (for --method selftrain)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. method=u2pl train.epochs=4 seed=1")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_defaults:
        print(dump(default_config()))
        return
    if args.list_methods:
        for name in methods.names():
            print(f"{name:12s} {methods.get(name).description}")
        return
    try:
        config, resume = _resolve_config(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    _train(config, resume)


def _resolve_config(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """(config, checkpoint to resume or None): a new run's config from the command line, a resumed
    run's from its checkpoint."""
    flags = [
        f"{key}={value}"
        for key, value in (
            ("method", args.method),
            ("train.schedule", args.schedule),
            ("semi.selftrain.pseudo_dir", args.pseudo_dir),
        )
        if value
    ]
    overrides = flags + list(args.overrides)
    if not args.resume:
        return load_config(args.config, overrides), None
    from .checkpoint import CheckpointError, checkpoint_path, load_checkpoint  # imports torch

    resume = checkpoint_path(args.resume)
    try:
        state = load_checkpoint(resume)
    except (CheckpointError, FileNotFoundError) as e:
        raise ValueError(f"--resume: {e}") from e
    return resume_config(state, resume, args.config, overrides), resume


def _train(config: dict[str, Any], resume: str | None) -> None:
    from ..data import DataError
    from .checkpoint import CheckpointError
    from .distributed import shutdown
    from .loop import Trainer  # after argument errors: importing torch takes a while
    from .run_folder import RunFolderError

    try:
        trainer = Trainer(config, resume=resume)
    except (ValueError, TypeError, FileNotFoundError, DataError, CheckpointError, RunFolderError) as e:
        shutdown()  # settings that are valid alone but not together, or data, device, checkpoint unusable
        sys.exit(f"error: {e}")
    try:
        trainer.train()
    except (FileNotFoundError, DataError, RunFolderError) as e:  # the message names the file
        sys.exit(f"error: {e}")
    finally:
        shutdown()


if __name__ == "__main__":
    main()
