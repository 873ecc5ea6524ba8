"""Where a run starts: the encoder's weights (``model.pretrained`` resolved) and the learning
rates that go with them, ``optim.lr`` for the encoder and ``optim.head_lr_mult`` times it for the
rest, whose defaults depend on whether the encoder starts pretrained
(docs/experiments.md#a-pretrained-start-modelpretrained)."""

from __future__ import annotations

from typing import Any

from ..models.build import BUILT_IN_MODEL
from ..models.deeplab import DEFAULT_WIDTH
from ..models.pretrained import resolve_source

SCRATCH_LR, PRETRAINED_LR = 0.008, 0.002  # the best found for supervised training from each start
PRETRAINED_HEAD_LR_MULT = 10.0  # as U2PL and UniMatch train the decoder over a pretrained encoder


def encoder_width(model_section: dict[str, Any]) -> int:
    """The small encoder's width: model.kwargs.width, else the built-in model's default."""
    return (model_section["kwargs"] or {}).get("width", DEFAULT_WIDTH)


def pretrained_source(config: dict[str, Any]) -> str:
    """The run's ``model.pretrained`` with ``auto`` resolved (always none for a user's model)."""
    m = config["model"]
    if m["name"] != BUILT_IN_MODEL:
        return "none"
    return resolve_source(m["pretrained"], m["backbone"], encoder_width(m))


def is_pretrained(config: dict[str, Any]) -> bool:
    return pretrained_source(config) != "none"


def base_lr(config: dict[str, Any]) -> float:
    """``optim.lr``, or its default: PRETRAINED_LR from a pretrained encoder, SCRATCH_LR otherwise."""
    lr = config["optim"]["lr"]
    if lr is not None:
        return float(lr)
    return PRETRAINED_LR if is_pretrained(config) else SCRATCH_LR


def head_lr_mult(config: dict[str, Any]) -> float:
    """``optim.head_lr_mult``, or its default: 10 from a pretrained encoder, 1 from scratch."""
    mult = config["optim"]["head_lr_mult"]
    if mult is not None:
        return float(mult)
    return PRETRAINED_HEAD_LR_MULT if is_pretrained(config) else 1.0
