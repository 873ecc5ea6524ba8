"""The figures a run leaves behind, drawn with matplotlib: a grid of predictions, the loss, mIoU and
pseudo-label quality curves, and the experiment table's grouped bars and pseudo-label curves. Each
PNG is written atomically."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.atomic import atomic_open


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


def colourize(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """(H, W) labels as (H, W, 3) uint8 colours; ignored and out-of-range labels are white."""
    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[: min(num_classes, 256)] = palette(min(num_classes, 256))
    return lut[labels.clamp(0, 255).to(torch.uint8).cpu().numpy()]


def prediction_rows(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, num_classes: int
) -> list[list[np.ndarray]]:
    """Per image, three (H, W, 3) uint8 tiles: the image, its ground truth and the prediction.
    ``images`` uint8 (N, 3, H, W)."""
    return [
        [images[i].permute(1, 2, 0).cpu().numpy(), colourize(labels[i], num_classes), colourize(preds[i], num_classes)]
        for i in range(images.shape[0])
    ]


def prediction_grid_array(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, num_classes: int
) -> np.ndarray:
    """The rows of :func:`prediction_rows` tiled into one (N*H, 3*W, 3) uint8 image."""
    return np.concatenate([np.concatenate(row, axis=1) for row in prediction_rows(images, labels, preds, num_classes)])


def _save(figure: Figure, path: str) -> None:
    FigureCanvasAgg(figure)
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png")


def save_prediction_grid(
    path: str, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, num_classes: int
) -> None:
    """One row per image: the image | ground truth | prediction."""
    rows = prediction_rows(images, labels, preds, num_classes)
    figure = Figure(figsize=(6, 2 * len(rows) + 0.3), dpi=100, layout="constrained")
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            axes[r, c].imshow(tile, interpolation="nearest")
            axes[r, c].set_axis_off()
    for c, title in enumerate(("image", "ground truth", "prediction")):
        axes[0, c].set_title(title, fontsize=10)
    _save(figure, path)


PSEUDO_LABEL_SERIES = (
    ("pseudo_coverage", "kept", "tab:green"),
    ("pseudo_accuracy", "accuracy of kept", "tab:purple"),
    ("pseudo_miou", "mIoU", "tab:orange"),
)


def _points(rows: Sequence[dict[str, float]], key: str, scale: float) -> list[tuple[float, float]]:
    points = [(r.get("step", math.nan), scale * r.get(key, math.nan)) for r in rows]
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def save_curves(path: str, rows: Sequence[dict[str, float]]) -> None:
    _save(curves_figure(rows), path)


def curves_figure(rows: Sequence[dict[str, float]]) -> Figure:
    """Training loss and validation mIoU against the step, side by side, and the pseudo-labels'
    quality against the truth (metrics.csv's pseudo_* columns) when the rows have it."""
    pseudo = {key: _points(rows, key, 100.0) for key, _, _ in PSEUDO_LABEL_SERIES}
    figure = Figure(figsize=(15 if any(pseudo.values()) else 10, 3.6), dpi=100, layout="constrained")
    panels = figure.subplots(1, 3 if any(pseudo.values()) else 2)
    for axes, key, scale, title, colour in (
        (panels[0], "loss", 1.0, "training loss", "tab:blue"),
        (panels[1], "miou", 100.0, "validation mIoU (%)", "tab:red"),
    ):
        points = _points(rows, key, scale)
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3, color=colour)
        else:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color="gray")
        axes.set_title(title)
    if any(pseudo.values()):
        for key, label, colour in PSEUDO_LABEL_SERIES:
            if pseudo[key]:
                panels[2].plot(*zip(*pseudo[key]), marker="o", markersize=3, color=colour, label=label)
        panels[2].set_title("unlabeled images' pseudo-labels (%)")
        panels[2].legend(fontsize=8)
    for axes in panels:
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    return figure


def save_pseudo_label_curves(path: str, runs: dict[str, Sequence[dict[str, float]]]) -> None:
    """The pseudo-labels' quality against the step (metrics.csv's pseudo_* columns), a panel per
    column and a line per run (``runs``: name -> its metrics rows); a run without them is left out."""
    figure = Figure(figsize=(15, 3.8), dpi=100, layout="constrained")
    for axes, (key, label, _) in zip(figure.subplots(1, len(PSEUDO_LABEL_SERIES)), PSEUDO_LABEL_SERIES):
        for name, rows in runs.items():
            points = _points(rows, key, 100.0)
            if points:
                axes.plot(*zip(*points), marker="o", markersize=3, label=name)
        axes.set_title(f"unlabeled images' pseudo-labels: {label} (%)", fontsize=10)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    _save(figure, path)


def save_bars(path: str, panels: Sequence[dict[str, object]]) -> None:
    """Grouped bar charts side by side. Each panel: ``{"title", "groups": [name], "series": [name],
    "values": {(group, series): value}}``; missing or non-finite values are left out."""
    figure = Figure(figsize=(5 * max(len(panels), 1), 4), dpi=100, layout="constrained")
    for k, panel in enumerate(panels):
        axes = figure.add_subplot(1, max(len(panels), 1), k + 1)
        groups, series = list(panel["groups"]), list(panel["series"])
        width = 0.8 / max(len(series), 1)
        highest = 0.0
        for s, name in enumerate(series):
            xs, heights = [], []
            for g, group in enumerate(groups):
                value = panel["values"].get((group, name))
                if value is not None and math.isfinite(value):
                    xs.append(g - 0.4 + (s + 0.5) * width)
                    heights.append(value)
            bars = axes.bar(xs, heights, width=width * 0.95, label=str(name))
            axes.bar_label(bars, fmt="%.3g", fontsize=8)
            highest = max([highest, *heights])
        axes.set_ylim(top=1.2 * highest or 1.0)  # room for the legend above the bars
        axes.set_xticks(range(len(groups)), [str(g) for g in groups])
        axes.set_title(str(panel["title"]), fontsize=10)
        axes.legend(fontsize=8, loc="upper left", ncols=max(len(series), 1))
    _save(figure, path)
