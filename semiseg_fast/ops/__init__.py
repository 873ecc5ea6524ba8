"""The fused pixel ops: one module per op (entry point, checks, custom op, fake, autograd)."""
from .cross_entropy import pseudo_label_cross_entropy
from .fixmatch import fixmatch_loss
from .negative_mask import negative_class_mask
from .percentile import entropy_percentile
from .pixel_stats import PixelStats, pixel_stats

__all__ = ["PixelStats", "entropy_percentile", "fixmatch_loss", "negative_class_mask", "pixel_stats", "pseudo_label_cross_entropy"]
