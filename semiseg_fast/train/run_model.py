"""The model of a run, as training, evaluation and pseudo-labelling build it from a config."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..models import build_model
from . import methods

BUILT_IN = "deeplabv3plus"


def build_run_model(config: dict[str, Any], num_classes: int) -> nn.Module:
    """``model.name`` with ``model.kwargs``; the built-in model also gets the arguments the run's
    method asks for (its heads). A keyword the model does not take is an error naming model.kwargs."""
    kwargs = dict(config["model"]["kwargs"] or {})
    if config["model"]["name"] == BUILT_IN:
        kwargs = methods.get(config["method"]).model_kwargs(config, kwargs)
    try:
        return build_model(config["model"]["name"], num_classes, **kwargs)
    except TypeError as e:
        raise TypeError(f"model.kwargs: building {config['model']['name']!r} with {sorted(kwargs)} failed: {e}") from e
