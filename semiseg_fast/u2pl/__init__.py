"""U2PL (Wang et al., CVPR 2022): entropy-filtered pseudo-labels, unreliable pixels as negatives.

The per-pixel ops it needs (entropy, exact percentile, class-rank masks) are in
:mod:`semiseg_fast.ops`; this package holds the method: the unsupervised and contrastive losses,
the class memory bank and the schedules. :class:`semiseg_fast.losses.U2PLLoss` combines them.
"""

from .contrastive import ContrastiveDraws, u2pl_contrastive_loss
from .memory_bank import ClassMemoryBank
from .schedule import alpha_t, drop_percent
from .unsupervised import u2pl_unsupervised_loss

__all__ = [
    "ClassMemoryBank",
    "ContrastiveDraws",
    "alpha_t",
    "drop_percent",
    "u2pl_contrastive_loss",
    "u2pl_unsupervised_loss",
]
