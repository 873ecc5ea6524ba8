"""The fused pixel ops: one module per op (entry point, checks, custom op, fake, autograd)."""

from .cps import cps_loss
from .cross_entropy import pseudo_label_cross_entropy
from .fixmatch import fixmatch_loss
from .infonce import infonce_loss
from .negative_mask import negative_class_mask
from .ohem import ohem_cross_entropy
from .percentile import entropy_percentile
from .photometric import photometric_loss
from .pixel_stats import PixelStats, pixel_stats
from .pseudoseg import calibrated_fusion, logit_scale, pseudoseg_consistency_loss

__all__ = [
    "PixelStats",
    "calibrated_fusion",
    "cps_loss",
    "entropy_percentile",
    "fixmatch_loss",
    "infonce_loss",
    "logit_scale",
    "negative_class_mask",
    "ohem_cross_entropy",
    "photometric_loss",
    "pixel_stats",
    "pseudo_label_cross_entropy",
    "pseudoseg_consistency_loss",
]
