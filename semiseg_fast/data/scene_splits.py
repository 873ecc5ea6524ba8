"""Split files of the embedded pool: one image id per line, ``scene`` and the image's index in the
training pool in six digits (``scene000123``), the ids pseudo-label folders use too. They let a
chosen set of labeled images (``python -m semiseg_fast.select_labels``) replace the pool's
random draw (``data.root`` with ``data.labeled_split`` and ``data.unlabeled_split``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..utils.atomic import atomic_open

_ID = re.compile(r"scene(\d{6})")


def scene_id(index: int) -> str:
    return f"scene{index:06d}"


def read_scene_split(path: str, pool_size: int) -> list[int]:
    """The pool indices a split file lists, in its order; a line that is not an id of this pool
    or repeats one is refused with the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the split file ({e.strerror or e})") from e
    indices, seen = [], set()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        match = _ID.fullmatch(text)
        if match is None or int(match.group(1)) >= pool_size:
            raise ValueError(
                f"{path}, line {number}: expected an image id scene000000 to scene{pool_size - 1:06d} "
                f"(the pool has {pool_size} images), got {text!r}"
            )
        index = int(match.group(1))
        if index in seen:
            raise ValueError(f"{path}, line {number}: {text} is listed twice")
        seen.add(index)
        indices.append(index)
    if not indices:
        raise ValueError(f"{path}: the split file lists no image")
    return indices


def write_scene_split(path: str, indices: Sequence[int]) -> None:
    """Writes the ids of ``indices`` one per line, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(scene_id(i) + "\n" for i in indices))
