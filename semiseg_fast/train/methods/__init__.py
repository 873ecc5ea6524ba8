"""Training methods, one file each (``supervised.py``, ``fixmatch.py``, ...), registered by name.
Every module of this package other than ``base`` and ``registry`` is a method and is imported
here, so a new built-in method is one new file."""

import importlib
import pkgutil

from .base import Method, StepContext, StepOutput, Upsampling, ema_update
from .registry import default_name, get, names, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Method",
    "StepContext",
    "StepOutput",
    "Upsampling",
    "default_name",
    "ema_update",
    "get",
    "names",
    "register",
]
