"""nn.Module losses that drop into existing training code."""
from .fixmatch import FixMatchLoss
from .pseudo_label import PseudoLabelCrossEntropy

__all__ = ["FixMatchLoss", "PseudoLabelCrossEntropy"]
