"""The bottom floor: what the kernel layer (triton, csrc) and the op layer both need, importing
nothing of the package itself: label helpers, the reduction and normalizer codes with the mean's
denominator, and the safe inverse used to scale gradients."""

from .codes import Normalizer, Reduction, mean_denominator
from .grad import inverse
from .labels import label_dtype, not_ignored

__all__ = ["Normalizer", "Reduction", "inverse", "label_dtype", "mean_denominator", "not_ignored"]
