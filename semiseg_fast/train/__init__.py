"""The training side: ``python -m semiseg_fast.train`` (see :mod:`semiseg_fast.train.cli`)."""

from .config import DEFAULTS, load_config
from .loop import Trainer, train

__all__ = ["DEFAULTS", "Trainer", "load_config", "train"]
