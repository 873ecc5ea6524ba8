"""The model of a run, as training, evaluation and pseudo-labelling build it from a config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import build_model
from ..models.build import BUILT_IN_MODEL
from ..models.pretrained import load_pretrained
from . import methods
from .start import pretrained_source


def build_run_model(config: dict[str, Any], num_classes: int, load_weights: bool = False) -> nn.Module:
    """``model.name`` with ``model.kwargs``; the built-in model also gets ``model.backbone``,
    ``model.output_stride`` and the arguments the run's method asks for (its heads). A keyword the
    model does not take is an error naming model.kwargs. ``load_weights``: start the encoder from
    ``model.pretrained`` (a new run; resumed runs, evaluation and pseudo-labelling load a checkpoint)."""
    m = config["model"]
    kwargs = dict(m["kwargs"] or {})
    if m["name"] == BUILT_IN_MODEL:
        kwargs = methods.get(config["method"]).model_kwargs(config, kwargs)
        kwargs.update(backbone=m["backbone"], output_stride=m["output_stride"])
    try:
        model = build_model(m["name"], num_classes, **kwargs)
    except TypeError as e:
        raise TypeError(f"model.kwargs: building {m['name']!r} with {sorted(kwargs)} failed: {e}") from e
    if load_weights:
        load_pretrained(model, pretrained_source(config), m["backbone"])
    return model


def evaluated_model(state: dict[str, Any], config: dict[str, Any], device: torch.device) -> nn.Module:
    """A checkpoint's evaluated weights (its EMA teacher where the run has one, else its model) in
    the run's model, on ``device`` in the memory format it trained in, in eval mode."""
    model = build_run_model(config, state["num_classes"])
    model.load_state_dict(state["teacher"] if state.get("teacher") is not None else state["model"])
    channels_last = config["train"]["channels_last"]
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model.eval()
