"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over
the target, so a run killed at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a renamed file gets the mode open() would
# have given it. Read once at import: os.umask is process-wide, so reading it later could race
# with other threads writing files.
FILE_MODE = 0o666 & ~_umask()


TEMPORARY_PREFIX = ".tmp-"  # what an interrupted write leaves behind is named so


def remove_temporaries(folder: str) -> list[str]:
    """Deletes what interrupted atomic writes left in ``folder``; returns the paths."""
    found = glob.glob(os.path.join(glob.escape(folder), TEMPORARY_PREFIX + "*"))
    for path in found:
        os.unlink(path)
    return found


@contextlib.contextmanager
def atomic_open(
    path: str, mode: str = "wb", before_replace: Callable[[str], None] | None = None, **kwargs
) -> Iterator[IO]:
    """``with atomic_open(path, "w") as f: ...`` writes ``path`` only if the block completes.
    ``before_replace(path)`` runs once the new content is on disk, just before it takes the name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        if before_replace is not None:
            before_replace(path)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names the file it was for
            raise OSError(e.errno, e.strerror or str(e), path) from e
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
