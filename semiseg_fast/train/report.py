"""What a run shows and leaves behind: a progress bar, the metrics CSV, a PNG grid of
predictions and a PNG of the loss and mIoU curves (drawn with Pillow)."""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic import atomic_open


class ProgressBar:
    """One redrawn line on a terminal; on a pipe or file (CI logs) a full line every
    ``log_interval`` seconds and at the end. Shows steps, the metrics last set, images/s and ETA."""

    def __init__(self, total: int, desc: str = "", stream=None, enabled: bool = True, log_interval: float = 10.0):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else log_interval
        self.count, self.images, self.metrics = 0, 0, {}
        self.start = self.last_draw = time.perf_counter()

    def set_metrics(self, **metrics: float) -> None:
        self.metrics.update(metrics)

    def update(self, n: int = 1, images: int = 0) -> None:
        self.count += n
        self.images += images
        now = time.perf_counter()
        if self.enabled and (now - self.last_draw >= self.interval or self.count >= self.total):
            self.last_draw = now
            self._draw(now)

    def line(self, now: Optional[float] = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate > 0 else float("inf")
        parts = [f"{self.desc} {self.count}/{self.total}"]
        parts += [f"{k}={v:.4f}" for k, v in self.metrics.items()]
        parts += [f"{self.images / elapsed:.1f} img/s", f"eta {_duration(eta)}"]
        return " ".join(parts)

    def _draw(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def write(self, message: str) -> None:
        """A message on its own line, above the bar."""
        if self.enabled:
            self.stream.write(("\r\x1b[K" if self.tty else "") + message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class MetricsCSV:
    """Appends rows with fixed columns, flushed row by row so a killed run keeps what it logged."""

    def __init__(self, path: str, fieldnames: Sequence[str]):
        self.path, self.fieldnames = path, list(fieldnames)
        if os.path.exists(path):
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if header is not None and header != self.fieldnames:
                raise ValueError(f"metrics CSV: {path!r} has columns {header}, expected {self.fieldnames}")

    def write(self, row: Dict[str, object]) -> None:
        unknown = set(row) - set(self.fieldnames)
        if unknown:
            raise KeyError(f"metrics CSV: unknown columns {sorted(unknown)}")
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fieldnames)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after ``step`` (a resumed run logs them again), atomically."""
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path: str) -> List[Dict[str, float]]:
    """Rows of a metrics CSV with numbers as floats (empty cells as NaN)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map: class bits spread over the high bits of R, G and B."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        value, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[c] = (r, g, b)
    return colours


def _save_png(image: Image.Image, path: str) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def colourize(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    lut = np.full((256, 3), 255, dtype=np.uint8)  # ignored and out-of-range labels: white
    lut[:min(num_classes, 256)] = palette(min(num_classes, 256))
    return lut[labels.clamp(0, 255).to(torch.uint8).cpu().numpy()]


def save_prediction_grid(path: str, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                         num_classes: int, ignore_index: int = 255) -> None:
    """One row per image: the image | ground truth | prediction. images uint8 (N, 3, H, W)."""
    n, _, h, w = images.shape
    title = 14
    grid = Image.new("RGB", (3 * w, title + n * h), "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(("image", "ground truth", "prediction")):
        draw.text((col * w + 2, 1), name, fill="black")
    for i in range(n):
        tiles = [images[i].permute(1, 2, 0).cpu().numpy(), colourize(labels[i], num_classes, ignore_index),
                 colourize(preds[i], num_classes, ignore_index)]
        for col, tile in enumerate(tiles):
            grid.paste(Image.fromarray(np.ascontiguousarray(tile)), (col * w, title + i * h))
    _save_png(grid, path)


def _panel(draw: ImageDraw.ImageDraw, box, xs: List[float], ys: List[float], title: str, colour: str) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    draw.text((left, top - 14), title, fill="black")
    points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if not points:
        draw.text((left + 8, top + 8), "no data", fill="gray")
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    sx = (right - left - 10) / (x1 - x0) if x1 > x0 else 0.0
    sy = (bottom - top - 10) / (y1 - y0) if y1 > y0 else 0.0
    xy = [(left + 5 + (x - x0) * sx, bottom - 5 - (y - y0) * sy) for x, y in points]
    if len(xy) > 1:
        draw.line(xy, fill=colour, width=2)
    for px, py in xy:
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
    draw.text((left - 4, bottom + 2), f"{x0:g}", fill="black")
    draw.text((right - 30, bottom + 2), f"{x1:g}", fill="black")
    draw.text((right + 4, bottom - 10), f"{y0:.3g}", fill="black")
    draw.text((right + 4, top), f"{y1:.3g}", fill="black")


def save_curves(path: str, rows: List[Dict[str, float]]) -> None:
    """Training loss and validation mIoU against the step, side by side."""
    steps = [r.get("step", float("nan")) for r in rows]
    image = Image.new("RGB", (720, 300), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, (20, 30, 320, 270), steps, [r.get("loss", float("nan")) for r in rows], "training loss vs step", "blue")
    _panel(draw, (380, 30, 680, 270), steps, [r.get("miou", float("nan")) for r in rows], "validation mIoU vs step",
           "red")
    _save_png(image, path)


def save_bars(path: str, panels: List[Dict[str, object]]) -> None:
    """Grouped bar charts side by side. Each panel: {"title", "groups": [name], "series": [name],
    "values": {(group, series): value}}; missing values are left out."""
    colours = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
    width = 60 + 400 * len(panels)
    image = Image.new("RGB", (width, 330), "white")
    draw = ImageDraw.Draw(image)
    for k, panel in enumerate(panels):
        left, top, right, bottom = 40 + 400 * k, 30, 400 * (k + 1), 260
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, top - 16), str(panel["title"]), fill="black")
        values = {key: v for key, v in panel["values"].items() if v is not None and math.isfinite(v)}
        top_value = max(values.values(), default=1.0) or 1.0
        groups, series = panel["groups"], panel["series"]
        slot = (right - left) / max(len(groups), 1)
        bar = slot * 0.8 / max(len(series), 1)
        for g, group in enumerate(groups):
            draw.text((left + g * slot + 4, bottom + 4), str(group)[:14], fill="black")
            for s, name in enumerate(series):
                v = values.get((group, name))
                if v is None:
                    continue
                x0 = left + g * slot + slot * 0.1 + s * bar
                y0 = bottom - (bottom - top - 14) * v / top_value
                draw.rectangle((x0, y0, x0 + bar - 2, bottom), fill=colours[s % len(colours)])
                draw.text((x0, y0 - 12), f"{v:.3g}", fill="black")
        for s, name in enumerate(series):
            draw.rectangle((left + 90 * s, bottom + 22, left + 90 * s + 10, bottom + 32), fill=colours[s % len(colours)])
            draw.text((left + 90 * s + 14, bottom + 21), str(name)[:12], fill="black")
    _save_png(image, path)
