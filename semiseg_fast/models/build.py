"""Model construction from the config, including a user's model given by import path."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from .deeplab import DeepLabV3Plus

BUILT_IN_MODEL = "deeplabv3plus"
BUILTIN = {BUILT_IN_MODEL: DeepLabV3Plus}


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``name`` is a built-in model ("deeplabv3plus") or ``"package.module:Class"``; the class is
    called as ``Class(num_classes=..., **kwargs)``. Its ``forward(x)`` returns logits (N, C, h, w)
    or a dict with ``"pred"`` (logits) and optionally ``"rep"`` (U2PL's representation)."""
    if name in BUILTIN:
        return BUILTIN[name](num_classes=num_classes, **kwargs)
    if ":" not in name:
        raise ValueError(f"model.name: expected one of {sorted(BUILTIN)} or 'package.module:Class', got {name!r}")
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model.name: cannot import {name!r}: {e}") from e
    return factory(num_classes=num_classes, **kwargs)


def model_outputs(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, representation or None) from whatever the model returned."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, dict) and "pred" in output:
        return output["pred"], output.get("rep")
    raise TypeError(f"model output: expected a tensor or a dict with 'pred', got {type(output).__name__}")
