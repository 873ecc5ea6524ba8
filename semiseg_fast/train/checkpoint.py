"""Checkpoints, written atomically (see :mod:`semiseg_fast.utils.atomic`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..utils.atomic import atomic_open


class CheckpointError(RuntimeError):
    """A file that is not a readable semiseg_fast checkpoint; names the file."""


def save_atomic(state: dict[str, Any], path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def checkpoint_path(path: str) -> str:
    """A checkpoint file, or a run folder meaning its ``last.pt``."""
    return os.path.join(path, "last.pt") if os.path.isdir(path) else path


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint: {path!r} is not a readable semiseg_fast checkpoint: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint: {path!r} is not a semiseg_fast checkpoint (no model/config entries)")
    return state
