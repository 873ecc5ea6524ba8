"""Starting weights for a model's encoder: the embedded ones shipped with the package (made by
``python -m semiseg_fast.pretrain``), ImageNet ResNets, a self-supervised depth run's encoder
(``python -m semiseg_fast.depth``), or a state dict in a file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import torch
from torch import nn

PRETRAINED_SOURCES = ("auto", "embedded", "imagenet", "none")
EMBEDDED_WIDTH = 32  # the small encoder's width the shipped weights are for
EMBEDDED_FILE = "embedded_small_w32.pt"
# where a file may nest the state dict; a torchvision ImageNet file is the bare state dict
NESTED_KEYS = ("encoder", "state_dict", "model")
IGNORED_PREFIXES = ("fc.",)  # the ImageNet classifier of a torchvision ResNet file
LISTED = 8  # keys named in an error


def embedded_weights_path() -> str:
    return str(resources.files("semiseg_fast.models").joinpath("weights", EMBEDDED_FILE))


def resolve_source(source: str, backbone: str, width: int) -> str:
    """``model.pretrained`` with ``auto`` resolved: embedded for the small encoder at the width the
    shipped weights have, imagenet for ResNets, none otherwise."""
    if source != "auto":
        return source
    if backbone != "small":
        return "imagenet"
    return "embedded" if width == EMBEDDED_WIDTH else "none"


DEPTH_PREFIX, DEPTH_WEIGHTS = "depth:", "depth.pt"  # model.pretrained=depth:RUN_DIR
DEPTH_DECODER = ("aspp.", "reduce.", "fuse.")  # what a depth run's decoder shares with DeepLabv3+'s


def weights_file(source: str) -> str:
    """The file a ``model.pretrained`` path names: ``depth:RUN_DIR`` is the weights a
    ``python -m semiseg_fast.depth`` run wrote, ``RUN_DIR/depth.pt``."""
    if source.startswith(DEPTH_PREFIX):
        return os.path.join(source[len(DEPTH_PREFIX) :], DEPTH_WEIGHTS)
    return source


def read_state_dict(path: str, what: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a state dict, or one nested under 'encoder', 'state_dict' or
    'model'. Loaded with ``weights_only``: a file cannot run code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no weights file at {path!r}")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle of something else, ...
        raise ValueError(f"{what}: {path!r} is not a readable torch state dict ({type(e).__name__}: {e})") from e
    for key in NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what}: {path!r} holds no state dict (a mapping of parameter names to tensors)")
    return dict(state)


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED])
    return shown + (f" and {len(keys) - LISTED} more" if len(keys) > LISTED else "")


def load_encoder_weights(encoder: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Loads ``state`` into ``encoder`` strictly, after dropping a ResNet file's classifier and an
    ``encoder.`` prefix (a whole model's state dict). A missing, unexpected or differently shaped
    tensor is an error that names the keys and ``origin``."""
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    own = encoder.state_dict()
    # files older than PyTorch 0.4.1 (torchvision's first ImageNet ResNets) have no batch-norm
    # counters: as torch's own loading does, those start from the encoder's
    state = {**{k: v for k, v in own.items() if k.endswith(".num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_named(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_named(unexpected)}")
    if shapes:
        problems.append(f"other shapes {len(shapes)}: {_named(shapes)}")
    if problems:
        raise ValueError(
            f"{origin}: the weights do not fit the {type(encoder).__name__} encoder; " + "; ".join(problems)
        )
    with torch.no_grad():
        encoder.load_state_dict(state, strict=True)


def load_pretrained(model: nn.Module, source: str, backbone: str) -> None:
    """Loads ``source`` (resolved: embedded | imagenet | none | a path) into ``model.encoder``."""
    if source == "none":
        return
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError("model.pretrained: the model has no .encoder to load weights into")
    if source == "embedded":
        path = embedded_weights_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"model.pretrained=embedded: the shipped weights {path!r} are missing from this installation; "
                "python -m semiseg_fast.pretrain makes them, or pass model.pretrained=none"
            )
        state, origin = read_state_dict(path), "model.pretrained=embedded"
    elif source == "imagenet":
        from .resnet import imagenet_state_dict

        state, origin = imagenet_state_dict(backbone), f"model.pretrained=imagenet ({backbone})"
    else:
        state, origin = read_state_dict(weights_file(source)), f"model.pretrained={source}"
    load_encoder_weights(encoder, state, origin)
    if source.startswith(DEPTH_PREFIX):  # the file read above: its "depth" entry is the whole depth network
        whole = torch.load(weights_file(source), map_location="cpu", weights_only=True)
        load_matching(model, whole.get("depth") if isinstance(whole, Mapping) else None, DEPTH_DECODER)


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor] | None, prefixes: tuple[str, ...]) -> None:
    """Copies the tensors of ``state`` under ``prefixes`` whose names and shapes ``model`` also has
    (a depth run's decoder into a segmentation decoder of the same design)."""
    own = model.state_dict()
    with torch.no_grad():
        for k, v in (state or {}).items():
            if k.startswith(prefixes) and k in own and own[k].shape == v.shape:
                own[k].copy_(v)
