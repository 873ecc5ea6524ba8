"""nn.Module losses that drop into existing training code."""

from .fixmatch import FixMatchLoss
from .ohem import OhemCrossEntropy
from .pseudo_label import PseudoLabelCrossEntropy
from .u2pl import U2PLLoss, U2PLOutput

__all__ = ["FixMatchLoss", "OhemCrossEntropy", "PseudoLabelCrossEntropy", "U2PLLoss", "U2PLOutput"]
