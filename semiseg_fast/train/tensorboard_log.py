"""An optional TensorBoard log of a run (``train.tensorboard=true``): the metrics of every logged
row as scalars and the prediction grid at every evaluation, in the run folder, so that
``tensorboard --logdir runs`` shows each run by its folder's name."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping

import numpy as np

INSTALL_HINT = "pip install 'semiseg_fast[tensorboard]' (or pip install tensorboard)"

# metrics.csv columns -> TensorBoard tags (grouped by their prefix in TensorBoard's scalar view)
TAGS = {
    "loss": "loss/total",
    "loss_sup": "loss/supervised",
    "loss_unsup": "loss/unsupervised",
    "mask_ratio": "pseudo_labels/mask_ratio",
    "lr": "optim/lr",
    "img_per_s": "speed/images_per_second",
    "miou": "val/miou",
    "pseudo_coverage": "pseudo_labels/coverage",
    "pseudo_accuracy": "pseudo_labels/accuracy",
    "pseudo_miou": "pseudo_labels/miou",
}


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """Writes to ``log_dir``. A run resumed at ``start_step`` hides what the interrupted run logged
    after that step (TensorBoard's purge), since it logs those steps again."""

    def __init__(self, log_dir: str, start_step: int = 0):
        if not available():
            raise ValueError(f"config: train.tensorboard=true needs the tensorboard package: {INSTALL_HINT}")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir, purge_step=start_step + 1 if start_step > 0 else None)

    def scalars(self, row: Mapping[str, object], step: int) -> None:
        for key, tag in TAGS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image``: (H, W, 3) uint8."""
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
