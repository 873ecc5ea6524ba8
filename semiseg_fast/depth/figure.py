"""The PNG a depth run leaves behind: for a few validation clips, frames t-1, t, t+1, the
predicted depth (median-scaled) and the true depth, both on one colour scale per row."""

from __future__ import annotations

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.atomic import atomic_open
from .evaluate import median_scaled

COLUMNS = ("frame t-1", "frame t", "frame t+1", "predicted depth", "true depth")


def save_depth_figure(path: str, frames: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> None:
    """``frames`` uint8 (N, 3, 3, H, W), ``pred`` and ``true`` (N, H, W); true <= 0 is unknown
    and drawn blank, and a row without any true depth shows the prediction unscaled."""
    n = frames.shape[0]
    figure = Figure(figsize=(2.0 * len(COLUMNS), 2.0 * n + 0.3), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n, len(COLUMNS), squeeze=False)
    for row in range(n):
        valid = true[row] > 0
        scaled = median_scaled(pred[row], true[row])
        shown_range = true[row][valid] if valid.any() else scaled
        low, high = float(shown_range.min()), float(shown_range.max())
        shown = [frames[row, i].permute(1, 2, 0).numpy() for i in range(3)]
        shown += [scaled.numpy(), true[row].masked_fill(~valid, float("nan")).numpy()]
        for col, image in enumerate(shown):
            ax = axes[row, col]
            if col < 3:
                ax.imshow(image)
            else:
                ax.imshow(image, cmap="magma_r", vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(COLUMNS[col], fontsize=9)
    figure.tight_layout()
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png")
