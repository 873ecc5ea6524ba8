"""semiseg_fast: fused kernels for semi-supervised semantic segmentation."""
from ._backend import BACKENDS, backend, cpp_available, get_backend
from .ops import PixelStats, fixmatch_loss, pixel_stats, pseudo_label_cross_entropy

__version__ = "0.1.0"

cpp_available()  # loads semiseg_fast._C (the CPU kernels) if it was built

__all__ = [
    "BACKENDS",
    "PixelStats",
    "backend",
    "fixmatch_loss",
    "get_backend",
    "pixel_stats",
    "pseudo_label_cross_entropy",
]
