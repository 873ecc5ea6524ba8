"""metrics.csv: one row per logged step, appended and flushed as it comes, so that a killed run
keeps what it logged; a resumed run drops the rows logged after its checkpoint, and gains the
columns added since its file was written."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

from ..utils.atomic import atomic_open


class MetricsCSV:
    """Appends rows with fixed columns, flushed row by row so a killed run keeps what it logged."""

    def __init__(self, path: str, fieldnames: Sequence[str]):
        self.path, self.fieldnames = path, list(fieldnames)
        if os.path.exists(path):
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if header is not None and header != self.fieldnames:
                if header != self.fieldnames[: len(header)]:
                    raise ValueError(f"metrics CSV: {path!r} has columns {header}, expected {self.fieldnames}")
                self._rewrite(lambda row: True)  # written before columns were added: they are empty there

    def write(self, row: dict[str, object]) -> None:
        unknown = set(row) - set(self.fieldnames)
        if unknown:
            raise KeyError(f"metrics CSV: unknown columns {sorted(unknown)}")
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        try:
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, self.fieldnames)
                if new:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as e:  # a failed write (disk full) names the file
            raise OSError(e.errno, e.strerror or str(e), self.path) from e

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after ``step`` (a resumed run logs them again), atomically."""
        if os.path.exists(self.path):
            self._rewrite(lambda row: int(float(row["step"])) <= step)

    def _rewrite(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """The rows ``keep`` accepts, under this file's columns (absent ones empty), atomically."""
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if keep(r)]
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fieldnames, restval="")
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path: str) -> list[dict[str, float]]:
    """Rows of a metrics CSV with numbers as floats (empty cells as NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]
