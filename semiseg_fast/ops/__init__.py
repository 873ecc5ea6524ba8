"""The fused pixel ops: one module per op (entry point, checks, custom op, fake, autograd)."""
from .cross_entropy import pseudo_label_cross_entropy
from .fixmatch import fixmatch_loss
from .pixel_stats import PixelStats, pixel_stats

__all__ = ["PixelStats", "fixmatch_loss", "pixel_stats", "pseudo_label_cross_entropy"]
