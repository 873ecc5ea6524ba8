"""Progress of a long loop: a tqdm bar on a terminal, a plain line every ``log_interval`` seconds
and at the end elsewhere (pipes and CI logs, where a redrawn bar would be one unreadable line)."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm import tqdm


class ProgressBar:
    """Steps done of ``total``, the metrics last set, images/s and the time left."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        log_interval: float = 10.0,
    ):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = log_interval
        self.count, self.images = 0, 0
        self.metrics: dict[str, float] = {}
        self.start = self.last_line = time.perf_counter()
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = (
            tqdm(total=total, desc=desc, file=self.stream, unit="step", dynamic_ncols=True) if enabled and tty else None
        )

    def set_metrics(self, **metrics: float) -> None:
        self.metrics.update(metrics)  # shown from the next update on

    def update(self, n: int = 1, images: int = 0) -> None:
        self.count += n
        self.images += images
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(), refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and (now - self.last_line >= self.interval or self.count >= self.total):
            self.last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def _postfix(self) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {**{k: f"{v:.4f}" for k, v in self.metrics.items()}, "img/s": f"{self.images / elapsed:.1f}"}

    def line(self, now: float | None = None) -> str:
        """The plain line: ``desc done/total key=value ... N img/s eta M:SS``."""
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate > 0 else float("inf")
        parts = [f"{self.desc} {self.count}/{self.total}"]
        parts += [f"{k}={v:.4f}" for k, v in self.metrics.items()]
        parts += [f"{self.images / elapsed:.1f} img/s", f"eta {_duration(eta)}"]
        return " ".join(parts)

    def write(self, message: str) -> None:
        """A message on its own line, above the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif self.enabled:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
