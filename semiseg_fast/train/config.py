"""Training configuration: defaults, a YAML file on top, then ``key.sub=value`` overrides.

Every key has a default here, so an unknown key in a file or on the command line is an error
that names it rather than a silently ignored typo; :func:`validate` checks the type and range of
every value, naming the key. A resumed run takes its config from its checkpoint
(:func:`resume_config`)."""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Callable, Iterable
from typing import Any

import yaml

METHODS = ("supervised", "fixmatch", "u2pl", "pseudoseg", "selftrain")

# Every key with its default. What each means, what it accepts and, where an experiment chose the
# default, the table that did: config_help.HELP, rendered as docs/training.md.
DEFAULTS: dict[str, Any] = {
    "method": "fixmatch",
    "seed": 0,
    "deterministic": False,
    "device": "auto",
    "out_dir": "runs/{method}-seed{seed}",
    "data": {
        "name": "synthetic",
        "root": None,
        "num_classes": None,
        "labeled_split": "labeled.txt",
        "unlabeled_split": "unlabeled.txt",
        "val_split": "val.txt",
        "synthetic_train": 800,
        "synthetic_val": 120,
        "image_size": 64,
        "labeled_fraction": 0.125,
        "crop_size": 56,
        "scale_range": [0.75, 1.5],
        "batch_size": 8,
        "unlabeled_batch_size": 8,
        "num_workers": 0,
        "ignore_index": 255,
    },
    "model": {"name": "deeplabv3plus", "kwargs": {"width": 32, "rep_dim": 64}},
    "optim": {
        "name": "adamw",
        "lr": 0.008,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "warmup_steps": 50,
    },
    "train": {
        "epochs": 16,
        "eval_every": 400,
        "checkpoint_every": 200,
        "channels_last": True,
        "amp": "auto",
        "grid_images": 6,
        "progress": True,
        "tensorboard": False,
        "schedule": "standard",
        "fast2x": {
            "low_res_fraction": 0.8,
            "low_res_scale": 0.6,
            "low_res_batch": 2,
            "low_res_lr": 0.5,
            "full_res_lr": 1.0,
        },
    },
    "semi": {
        "teacher": "ema",
        "ema_decay": 0.99,
        "threshold": 0.95,
        "unsupervised_weight": 1.0,
        "strong_color": True,
        "cutmix_p": 0.5,
        "u2pl": {
            "drop_percent": 80.0,
            "contrastive": True,
            "contrastive_weight": 0.1,
            "sup_only_epochs": 1,
            "low_rank": 3,
            "high_rank": 7,
            "num_queries": 64,
            "num_negatives": 32,
            "bank_capacity": 4096,
        },
        "selftrain": {"pseudo_dir": None, "threshold": 0.0, "soft": False, "class_balanced": False},
        "pseudoseg": {
            "gamma": 0.75,
            "temperature": 0.5,
            "threshold": 0.0,
            "soft": True,
            "cutout_size": 0.2,
            "sgc_weight": 1.0,
            "classifier_weight": 1.0,
            "classifier_backprop": False,
        },
    },
    "eval": {"mode": "whole", "window": 64, "stride": 48, "batch_size": 32},
}


# Mappings handed to user code as they are (any keys): ``model.kwargs.width=16`` sets one entry
# and keeps the others, while ``model.kwargs={...}`` (or a file) replaces the whole mapping.
FREE_FORM = ("model.kwargs",)

# Folders: a resumed run may name them by another path (relative, absolute, through a link).
PATH_KEYS = ("data.root", "semi.selftrain.pseudo_dir")

# Keys a resumed run may change: they decide what is shown, logged, evaluated or how data is
# loaded, never which weights training produces.
RESUME_ADJUSTABLE = (
    "train.progress",
    "train.tensorboard",
    "train.eval_every",
    "train.checkpoint_every",
    "train.grid_images",
    "data.num_workers",
    "eval.batch_size",
)


def merge(base: dict[str, Any], update: dict[str, Any], where: str) -> None:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise KeyError(f"config: unknown key {path!r}")
        if isinstance(base[key], dict) and path not in FREE_FORM:
            if not isinstance(value, dict):
                raise TypeError(f"config: {path!r} expects a mapping, got {value!r}")
            merge(base[key], value, path + ".")
        else:
            base[key] = value


def _split_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override: expected key.sub=value, got {text!r}")
    return key.split("."), yaml.safe_load(value) if value else None


def parse_override(text: str) -> dict[str, Any]:
    """``a.b=value`` as the tree ``{"a": {"b": value}}`` (the value parsed as YAML)."""
    parts, value = _split_override(text)
    tree: dict[str, Any] = {}
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def apply_override(config: dict[str, Any], text: str) -> None:
    """Sets one ``key.sub=value``; a key inside a free-form mapping (``model.kwargs.width``) is
    set in that mapping, keeping its other entries."""
    parts, value = _split_override(text)
    for n in range(2, len(parts)):
        if ".".join(parts[:n]) in FREE_FORM:
            parent = _get(config, ".".join(parts[: n - 1]))
            if parent[parts[n - 1]] is None:
                parent[parts[n - 1]] = {}
            _set_nested(parent[parts[n - 1]], parts[n:], value, ".".join(parts[:n]))
            return
    merge(config, parse_override(text), "")


def _set_nested(node: Any, parts: list[str], value: Any, where: str) -> None:
    for part in parts[:-1]:
        if not isinstance(node, dict):
            raise TypeError(f"config: {where!r} expects a mapping, got {node!r}")
        node = node.setdefault(part, {})
        where = f"{where}.{part}"
    if not isinstance(node, dict):
        raise TypeError(f"config: {where!r} expects a mapping, got {node!r}")
    node[parts[-1]] = value


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file at ``path``, then each ``key.sub=value`` override."""
    config = _apply_command_line(copy.deepcopy(DEFAULTS), path, overrides)
    validate(config)
    return config


def _apply_command_line(config: dict[str, Any], path: str | None, overrides: Iterable[str]) -> dict[str, Any]:
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise FileNotFoundError(f"config: cannot read {path!r}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ValueError(f"config: {path!r} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise TypeError(f"config: {path!r} must hold a mapping at the top level")
        merge(config, loaded, "")
    for text in overrides:
        apply_override(config, text)
    return config


# keys added after runs were already being saved, with the value those runs trained with (their
# defaults differ from today's): a checkpoint without the key resumes as it was started
FORMER_DEFAULTS = {"train.fast2x.full_res_lr": None, "train.fast2x.low_res_batch": 1, "train.fast2x.low_res_lr": None}


def _set_existing(config: dict[str, Any], key: str, value: Any) -> None:
    parent, _, leaf = key.rpartition(".")
    node = _get(config, parent)
    if leaf not in node:
        raise KeyError(f"{key}: not a config key")
    node[leaf] = value


def config_from_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """The config a checkpoint was trained with, on top of today's defaults (so that keys added
    since it was written have values: those of :data:`FORMER_DEFAULTS` where they changed)."""
    if not isinstance(state.get("config"), dict):
        raise ValueError("checkpoint: its config entry is not a mapping")
    config = copy.deepcopy(DEFAULTS)
    for key, value in FORMER_DEFAULTS.items():
        _set_existing(config, key, value)
    merge(config, copy.deepcopy(state["config"]), "")
    return config


def resume_config(
    state: dict[str, Any], checkpoint: str, path: str | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """The config to resume ``checkpoint`` with: the checkpoint's own, written to the checkpoint's
    folder. A command line (file ``path``, ``overrides``) may repeat it and change the keys of
    :data:`RESUME_ADJUSTABLE`; any other change is refused with an error naming the keys."""
    saved = config_from_checkpoint(state)
    requested = _apply_command_line(dict(copy.deepcopy(saved), out_dir=None), path, overrides)
    conflicts = resume_conflicts(saved, requested)
    if conflicts:
        raise ValueError(describe_conflicts(checkpoint, saved, requested, conflicts))
    folder = run_folder(checkpoint)
    as_path = folder.replace("{", "{{").replace("}", "}}")  # a path, not a template
    if requested["out_dir"] is None:
        requested["out_dir"] = as_path
    validate(requested)
    check_same_folder(requested["out_dir"].format(method=requested["method"], seed=requested["seed"]), folder)
    requested["out_dir"] = as_path
    return requested


def run_folder(checkpoint: str) -> str:
    """The run folder of a checkpoint file: where a resumed run writes."""
    return os.path.dirname(checkpoint) or "."


def resume_conflicts(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a checkpoint's config and ``config`` and would change the
    resumed run (out_dir is checked separately: see :func:`check_same_folder`)."""
    ignored = set(RESUME_ADJUSTABLE) | {"out_dir"}
    standard = saved["train"]["schedule"] == config["train"]["schedule"] == "standard"
    return [
        key
        for key in differing_keys(saved, config)
        if key not in ignored
        and not (standard and key.startswith("train.fast2x."))  # settings of a schedule not in use
        and not (key in PATH_KEYS and _same_path(_lookup(saved, key), _lookup(config, key)))
    ]


def _same_path(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and os.path.realpath(a) == os.path.realpath(b)


def describe_conflicts(checkpoint: str, saved: dict[str, Any], config: dict[str, Any], keys: list[str]) -> str:
    changes = "; ".join(f"{key}: {_lookup(saved, key)!r} there, {_lookup(config, key)!r} here" for key in keys)
    return (
        f"--resume: {checkpoint!r} was trained with other values of {', '.join(keys)} ({changes}); a resumed "
        "run continues with its checkpoint's config: drop these overrides, or start a new run in another out_dir"
    )


def check_same_folder(out_dir: str, folder: str) -> None:
    """A resumed run writes where its checkpoint is; an out_dir naming another folder is an error."""
    if os.path.realpath(out_dir) != os.path.realpath(folder):
        raise ValueError(
            f"out_dir: a resumed run writes to its checkpoint's folder {folder!r}, got {out_dir!r} "
            "(leave out_dir out to resume, or copy the run folder and resume the copy)"
        )


_MISSING = object()


def differing_keys(a: Any, b: Any, where: str = "") -> list[str]:
    """Dotted keys of the leaves where two nested mappings differ (present in one only included)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in list(a) + [k for k in b if k not in a]:
            out += differing_keys(a.get(key, _MISSING), b.get(key, _MISSING), f"{where}{key}.")
        return out
    same = a is not _MISSING and b is not _MISSING and type(a) is type(b) and a == b
    numbers_equal = all(_is_number(v) for v in (a, b)) and a == b
    return [] if same or numbers_equal else [where[:-1]]


def _lookup(config: dict[str, Any], key: str) -> Any:
    try:
        return _get(config, key)
    except (KeyError, TypeError):
        return "(unset)"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _non_empty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _formats(template: Any) -> bool:
    try:
        template.format(method="m", seed=0)
        return True
    except (KeyError, IndexError, ValueError, AttributeError):
        return False


# key groups of the same type and range, checked by validate()
POSITIVE_INTS = (
    "data.synthetic_train",
    "data.synthetic_val",
    "data.image_size",
    "data.crop_size",
    "data.batch_size",
    "data.unlabeled_batch_size",
    "train.epochs",
    "train.eval_every",
    "train.checkpoint_every",
    "train.fast2x.low_res_batch",
    "semi.u2pl.low_rank",
    "semi.u2pl.num_queries",
    "semi.u2pl.num_negatives",
    "semi.u2pl.bank_capacity",
    "eval.window",
    "eval.stride",
    "eval.batch_size",
)
NON_NEGATIVE_INTS = ("seed", "data.num_workers", "optim.warmup_steps", "train.grid_images", "semi.u2pl.sup_only_epochs")
BOOLEANS = (
    "deterministic",
    "train.channels_last",
    "train.progress",
    "train.tensorboard",
    "semi.strong_color",
    "semi.u2pl.contrastive",
    "semi.selftrain.soft",
    "semi.selftrain.class_balanced",
    "semi.pseudoseg.soft",
    "semi.pseudoseg.classifier_backprop",
)
UNIT_INTERVAL = (
    "train.fast2x.low_res_fraction",
    "semi.ema_decay",
    "semi.threshold",
    "semi.cutmix_p",
    "semi.selftrain.threshold",
    "semi.pseudoseg.gamma",
    "semi.pseudoseg.threshold",
    "semi.pseudoseg.cutout_size",
)
NON_NEGATIVE_NUMBERS = (
    "optim.weight_decay",
    "optim.poly_power",
    "semi.unsupervised_weight",
    "semi.u2pl.contrastive_weight",
    "semi.pseudoseg.sgc_weight",
    "semi.pseudoseg.classifier_weight",
)
NON_EMPTY_STRINGS = ("data.labeled_split", "data.unlabeled_split", "data.val_split", "model.name")


Check = Callable[[bool, str, str], None]


def validate(config: dict[str, Any]) -> None:
    """Types and ranges of every key; the first bad one raises an error naming it."""

    def check(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"config: {key} expected {expected}, got {_get(config, key)!r}")

    check(config["method"] in METHODS, "method", " | ".join(METHODS))
    check(config["device"] in ("auto", "cpu", "cuda"), "device", "auto | cpu | cuda")
    check(
        _non_empty_str(config["out_dir"]) and _formats(config["out_dir"]),
        "out_dir",
        "a folder (may hold {method} and {seed})",
    )
    _check_groups(config, check)
    _check_data_and_model(config, check)
    _check_optim_and_train(config, check)
    _check_semi_and_eval(config, check)


def _check_groups(config: dict[str, Any], check: Check) -> None:
    get = lambda key: _get(config, key)
    for key in BOOLEANS:
        check(isinstance(get(key), bool), key, "true | false")
    for key in POSITIVE_INTS:
        check(_is_int(get(key)) and get(key) > 0, key, "a positive integer")
    for key in NON_NEGATIVE_INTS:
        check(_is_int(get(key)) and get(key) >= 0, key, "an integer >= 0")
    for key in UNIT_INTERVAL:
        check(_is_number(get(key)) and 0.0 <= get(key) <= 1.0, key, "a number in [0, 1]")
    for key in NON_NEGATIVE_NUMBERS:
        check(_is_number(get(key)) and get(key) >= 0.0, key, "a number >= 0")
    for key in NON_EMPTY_STRINGS:
        check(_non_empty_str(get(key)), key, "a non-empty string")


def _check_data_and_model(config: dict[str, Any], check: Check) -> None:
    dc = config["data"]
    check(dc["image_size"] >= 8, "data.image_size", "an integer >= 8")
    check(dc["name"] in ("synthetic", "voc", "cityscapes"), "data.name", "synthetic | voc | cityscapes")
    check(dc["name"] == "synthetic" or _non_empty_str(dc["root"]), "data.root", "a folder for voc / cityscapes")
    check(dc["root"] is None or isinstance(dc["root"], str), "data.root", "a folder")
    check(
        dc["num_classes"] is None or (_is_int(dc["num_classes"]) and dc["num_classes"] >= 2),
        "data.num_classes",
        "an integer >= 2",
    )
    check(
        _is_number(dc["labeled_fraction"]) and 0.0 < dc["labeled_fraction"] <= 1.0,
        "data.labeled_fraction",
        "a fraction in (0, 1]",
    )
    scales = dc["scale_range"]
    check(
        isinstance(scales, (list, tuple))
        and len(scales) == 2
        and all(_is_number(s) and s > 0 for s in scales)
        and scales[0] <= scales[1],
        "data.scale_range",
        "[min, max], two positive numbers with min <= max",
    )
    check(_is_int(dc["ignore_index"]) and 0 <= dc["ignore_index"] <= 255, "data.ignore_index", "an integer in [0, 255]")
    check(
        config["model"]["kwargs"] is None or isinstance(config["model"]["kwargs"], dict),
        "model.kwargs",
        "a mapping of keyword arguments",
    )


def _check_optim_and_train(config: dict[str, Any], check: Check) -> None:
    o = config["optim"]
    check(o["name"] in ("sgd", "adamw"), "optim.name", "sgd | adamw")
    check(_is_number(o["lr"]) and o["lr"] > 0.0, "optim.lr", "a positive number")
    check(_is_number(o["momentum"]) and 0.0 <= o["momentum"] < 1.0, "optim.momentum", "a number in [0, 1)")
    check(o["name"] != "sgd" or o["momentum"] > 0.0, "optim.momentum", "a number in (0, 1) with sgd (Nesterov)")
    tc = config["train"]
    check(tc["amp"] in ("auto", "bf16", "fp16", "off", False), "train.amp", "auto | bf16 | fp16 | off")
    check(tc["schedule"] in ("standard", "fast2x"), "train.schedule", "standard | fast2x")
    scale = tc["fast2x"]["low_res_scale"]
    check(
        _is_number(scale) and 0.0 < scale <= 1.0, "train.fast2x.low_res_scale", "a fraction of the crop side in (0, 1]"
    )
    held = tc["fast2x"]["low_res_lr"]
    check(
        held is None or (_is_number(held) and held > 0.0),
        "train.fast2x.low_res_lr",
        "null or a positive factor of optim.lr",
    )
    restart = tc["fast2x"]["full_res_lr"]
    check(
        restart is None or (_is_number(restart) and 0.0 < restart <= 1.0),
        "train.fast2x.full_res_lr",
        "null or a factor of optim.lr in (0, 1]",
    )


def _check_semi_and_eval(config: dict[str, Any], check: Check) -> None:
    sc = config["semi"]
    check(sc["teacher"] in ("ema", "shared"), "semi.teacher", "ema | shared")
    u = sc["u2pl"]
    check(
        _is_number(u["drop_percent"]) and 0.0 <= u["drop_percent"] <= 100.0,
        "semi.u2pl.drop_percent",
        "a percentage in [0, 100]",
    )
    check(
        _is_int(u["high_rank"]) and u["high_rank"] > u["low_rank"],
        "semi.u2pl.high_rank",
        f"an integer > semi.u2pl.low_rank={u['low_rank']}",
    )
    st = sc["selftrain"]
    check(st["pseudo_dir"] is None or isinstance(st["pseudo_dir"], str), "semi.selftrain.pseudo_dir", "a folder")
    check(
        config["method"] != "selftrain" or _non_empty_str(st["pseudo_dir"]),
        "semi.selftrain.pseudo_dir",
        "a folder written by python -m semiseg_fast.pseudo_label (--pseudo-dir)",
    )
    temperature = sc["pseudoseg"]["temperature"]
    check(_is_number(temperature) and temperature > 0.0, "semi.pseudoseg.temperature", "a positive number")
    ec = config["eval"]
    check(ec["mode"] in ("whole", "slide"), "eval.mode", "whole | slide")
    check(
        ec["mode"] != "slide" or ec["stride"] <= ec["window"],
        "eval.stride",
        f"at most eval.window={ec['window']} (a larger stride leaves pixels that no window covers)",
    )


def _get(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
