"""The run folder must be writable before training starts, and a failed write during training
ends the run with one line naming the file (the previous checkpoint stays intact)."""

from __future__ import annotations

import os


class RunFolderError(OSError):
    """A run folder that cannot be used, or a write into it that failed; the message names the path."""


def check_writable(out_dir: str) -> None:
    """``out_dir`` is, or can be created as, a folder this process may write in."""
    path = os.path.abspath(out_dir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == path else f"lies under {existing!r}, which is"
        raise RunFolderError(f"out_dir: {out_dir!r} {where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"out_dir: {existing!r} is not writable (out_dir={out_dir!r})")


def in_folder(path: object, folder: str) -> bool:
    if not isinstance(path, str):
        return False
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def write_failure(error: OSError, last_checkpoint: str) -> RunFolderError:
    """The one-line error of a write that failed during training (disk full, folder made read-only)."""
    kept = f"; the last complete checkpoint, {last_checkpoint!r}, is intact" if os.path.isfile(last_checkpoint) else ""
    name = error.filename if error.filename else "a file of the run"
    return RunFolderError(f"cannot write {name!r}: {error.strerror or error}{kept}")
