"""semiseg_fast: fused kernels for semi-supervised semantic segmentation."""

from . import mixing, u2pl
from ._backend import BACKENDS, backend, cpp_available, get_backend
from .losses import FixMatchLoss, OhemCrossEntropy, PseudoLabelCrossEntropy, U2PLLoss
from .ops import (
    PixelStats,
    calibrated_fusion,
    cps_loss,
    entropy_percentile,
    fixmatch_loss,
    infonce_loss,
    negative_class_mask,
    ohem_cross_entropy,
    photometric_loss,
    pixel_stats,
    pseudo_label_cross_entropy,
    pseudoseg_consistency_loss,
)
from .utils import cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit

__version__ = "0.1.0"

cpp_available()  # loads semiseg_fast._C (the CPU kernels) if it was built

__all__ = [
    "BACKENDS",
    "FixMatchLoss",
    "OhemCrossEntropy",
    "PixelStats",
    "PseudoLabelCrossEntropy",
    "U2PLLoss",
    "backend",
    "calibrated_fusion",
    "cps_loss",
    "cpu_cache_info",
    "empty_cpu_cache",
    "entropy_percentile",
    "fixmatch_loss",
    "get_backend",
    "infonce_loss",
    "negative_class_mask",
    "ohem_cross_entropy",
    "photometric_loss",
    "pixel_stats",
    "pseudo_label_cross_entropy",
    "pseudoseg_consistency_loss",
    "set_cpu_cache_limit",
    "mixing",
    "u2pl",
]
