"""The bottom floor: what the kernel layer (triton, csrc) and the op layer both need, importing
nothing of the package itself: label helpers, the reduction and normalizer codes with the mean's
denominator, the safe inverse used to scale gradients and the fused losses' gradient buffer."""

from .codes import Normalizer, Reduction, mean_denominator
from .grad import inverse, saved_grad_buffer, saved_grad_dtype
from .labels import label_dtype, not_ignored

__all__ = [
    "Normalizer",
    "Reduction",
    "inverse",
    "label_dtype",
    "mean_denominator",
    "not_ignored",
    "saved_grad_buffer",
    "saved_grad_dtype",
]
