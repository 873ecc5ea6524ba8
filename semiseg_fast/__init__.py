"""semiseg_fast: fused kernels for semi-supervised semantic segmentation."""
from ._backend import BACKENDS, backend, cpp_available, get_backend
from .losses import FixMatchLoss, PseudoLabelCrossEntropy
from .ops import PixelStats, fixmatch_loss, pixel_stats, pseudo_label_cross_entropy
from .utils import cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit

__version__ = "0.1.0"

cpp_available()  # loads semiseg_fast._C (the CPU kernels) if it was built

__all__ = [
    "BACKENDS",
    "FixMatchLoss",
    "PseudoLabelCrossEntropy",
    "PixelStats",
    "backend",
    "cpu_cache_info",
    "empty_cpu_cache",
    "fixmatch_loss",
    "get_backend",
    "pixel_stats",
    "pseudo_label_cross_entropy",
    "set_cpu_cache_limit",
]
