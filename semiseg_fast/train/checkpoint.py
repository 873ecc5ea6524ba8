"""Atomic checkpoints: written to a temporary file in the same folder, flushed to disk, then
renamed over the old one, so a run killed at any moment leaves either the previous or the new
checkpoint, never a truncated one."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import torch


def save_atomic(state: Dict[str, Any], path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise RuntimeError(f"checkpoint: {path!r} is not a readable semiseg_fast checkpoint: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise RuntimeError(f"checkpoint: {path!r} is not a semiseg_fast checkpoint (no model/config entries)")
    return state
