"""Plain PyTorch (and, where the official code uses it, NumPy) versions of every op, written
the way the research code writes them: the ground truth of the tests, the ``reference``
backend, and the baseline of the benchmarks. ``reference.u2pl`` transcribes U2PL's official
loss functions and memory bank."""

from . import photometric, pseudoseg, u2pl
from .core import (
    cps_loss,
    entropy_percentile,
    fixmatch_loss,
    infonce_loss,
    negative_class_mask,
    newest_negatives,
    ohem_cross_entropy,
    pixel_stats,
    pseudo_label_cross_entropy,
)

__all__ = [
    "cps_loss",
    "entropy_percentile",
    "fixmatch_loss",
    "infonce_loss",
    "negative_class_mask",
    "newest_negatives",
    "ohem_cross_entropy",
    "pixel_stats",
    "pseudo_label_cross_entropy",
    "photometric",
    "pseudoseg",
    "u2pl",
]
