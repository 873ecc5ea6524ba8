"""Checkpoints: written atomically (see :mod:`semiseg_fast.utils.atomic`), with a SHA-256 of their
content that every load verifies, and the run's previous ``last.pt`` kept as ``previous.pt`` so
that a damaged one has a good one beside it."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from ..utils.atomic import atomic_open

LAST, PREVIOUS = "last.pt", "previous.pt"
CHECKSUM = "sha256"  # the entry holding the digest of all the others


class CheckpointError(RuntimeError):
    """A file that is not a readable semiseg_fast checkpoint; names the file."""


def content_sha256(state: dict[str, Any]) -> str:
    """A digest of a checkpoint's entries (other than the digest): names, types, tensors' dtypes,
    shapes and bytes, and the other values' reprs, in a fixed order."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            h.update(f"dict {len(value)};".encode())
            for key in sorted(value, key=repr):
                h.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"{type(value).__name__} {len(value)};".encode())
            for item in value:
                feed(item)
        else:
            h.update(f"{type(value).__name__} {value!r};".encode())

    feed({k: v for k, v in state.items() if k != CHECKSUM})
    return h.hexdigest()


def save_atomic(state: dict[str, Any], path: str, keep_previous: bool = False) -> None:
    """Writes ``state`` with its digest. With ``keep_previous`` the file it replaces stays as
    ``previous.pt`` beside it (renamed only once the new one is complete on disk)."""
    with atomic_open(path, "wb", before_replace=_keep_previous if keep_previous else None) as f:
        torch.save({**state, CHECKSUM: content_sha256(state)}, f)


def _keep_previous(path: str) -> None:
    if os.path.exists(path):
        os.replace(path, os.path.join(os.path.dirname(path), PREVIOUS))


def checkpoint_path(path: str) -> str:
    """A checkpoint file, or a run folder meaning its ``last.pt``."""
    return os.path.join(path, LAST) if os.path.isdir(path) else path


def _alternative(path: str) -> str:
    previous = os.path.join(os.path.dirname(path), PREVIOUS)
    if os.path.basename(path) == LAST and os.path.isfile(previous):
        return f"; the run's previous checkpoint is {previous!r} (--resume {previous})"
    return ""


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's state, its digest verified (checkpoints written before digests are loaded
    as they are). A damaged or foreign file raises :class:`CheckpointError` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: {path!r} does not exist{_alternative(path)}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint: {path!r} is not a readable semiseg_fast checkpoint: {e}{_alternative(path)}"
        ) from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint: {path!r} is not a semiseg_fast checkpoint (no model/config entries)")
    stored = state.pop(CHECKSUM, None)
    if stored is not None and stored != content_sha256(state):
        raise CheckpointError(
            f"checkpoint: {path!r} is damaged: its content does not match its SHA-256{_alternative(path)}"
        )
    return state
