"""The training side: ``python -m semiseg_fast.train`` (see :mod:`semiseg_fast.train.cli`)."""

from .config import default_config, load_config
from .loop import Trainer, train

__all__ = ["Trainer", "default_config", "load_config", "train"]
