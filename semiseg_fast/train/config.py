"""Training configuration: defaults, a YAML file on top, then ``key.sub=value`` overrides.

Every key has a default here, so an unknown key in a file or on the command line is an error
that names it rather than a silently ignored typo."""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Optional

import yaml

METHODS = ("supervised", "fixmatch", "u2pl", "pseudoseg", "selftrain")

DEFAULTS: Dict[str, Any] = {
    "method": "fixmatch",         # supervised | fixmatch | u2pl | pseudoseg | selftrain
    "seed": 0,
    "deterministic": False,       # bit-exact reruns and resumes (deterministic algorithms only)
    "device": "auto",             # auto | cpu | cuda
    "out_dir": "runs/{method}-seed{seed}",
    "data": {
        "name": "synthetic",      # synthetic | voc | cityscapes
        "root": None,             # folder of a voc / cityscapes dataset
        "num_classes": None,      # required for folders; the synthetic set knows its own
        "labeled_split": "labeled.txt",
        "unlabeled_split": "unlabeled.txt",
        "val_split": "val.txt",
        "synthetic_train": 800,   # images in the synthetic training pool
        "synthetic_val": 120,
        "image_size": 64,         # synthetic image side
        "labeled_fraction": 0.125,  # synthetic only: the rest of the pool is unlabeled
        "crop_size": 56,
        "scale_range": [0.75, 1.5],
        "batch_size": 8,          # labeled images per step and process
        "unlabeled_batch_size": 8,
        "num_workers": 0,
        "ignore_index": 255,
    },
    "model": {"name": "deeplabv3plus", "kwargs": {"width": 32, "rep_dim": 64}},
    "optim": {"name": "adamw", "lr": 0.002, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9,
              "warmup_steps": 50},      # sgd uses momentum (Nesterov); adamw ignores it
    "train": {
        "epochs": 16,             # passes over the unlabeled pool (the budget of every method)
        "eval_every": 400,        # steps; also at the end
        "checkpoint_every": 200,  # steps; also at the end
        "channels_last": True,
        "amp": "auto",            # auto | bf16 | fp16 | off (auto: fp16 on CUDA, bf16 on CPUs with native bf16)
        "grid_images": 6,
        "progress": True,
        "schedule": "standard",   # standard | fast2x (reduced crops for most steps; see train/schedule.py)
        "fast2x": {"low_res_fraction": 0.85, "low_res_scale": 0.5},
    },
    "semi": {
        "teacher": "ema",         # ema | shared (the student itself, without gradients)
        "ema_decay": 0.99,
        "threshold": 0.95,        # fixmatch confidence threshold
        "unsupervised_weight": 1.0,
        "strong_color": True,     # colour jitter / grayscale / blur on the strong view
        "cutmix_p": 0.5,
        "u2pl": {"drop_percent": 80.0, "contrastive": True, "contrastive_weight": 0.1, "sup_only_epochs": 1,
                 "low_rank": 3, "high_rank": 7, "num_queries": 64, "num_negatives": 32, "bank_capacity": 4096},
        # self-training on offline pseudo-labels (python -m semiseg_fast.pseudo_label): the unlabeled
        # batch (data.unlabeled_batch_size, so the human:pseudo mix is batch_size:unlabeled_batch_size)
        # comes from pseudo_dir; pixels under `threshold` confidence are ignored; `soft` trains against
        # the stored top-k probabilities; `class_balanced` centres crops on a uniformly drawn class
        "selftrain": {"pseudo_dir": None, "threshold": 0.0, "soft": False, "class_balanced": False},
        # PseudoSeg: fusion of decoder and SGC logits, Cutout (a square of this fraction of the crop
        # side, ignored by the loss) instead of CutMix, colour jitter always on. classifier_backprop:
        # whether the image classifier's BCE trains the backbone (PseudoSeg's code: yes, on a pretrained
        # backbone); off here because from scratch it cost 7 mIoU on the embedded dataset (README)
        "pseudoseg": {"gamma": 0.5, "temperature": 0.5, "threshold": 0.0, "soft": True, "cutout_size": 0.2,
                      "sgc_weight": 1.0, "classifier_weight": 1.0, "classifier_backprop": False},
    },
    "eval": {"mode": "whole", "window": 64, "stride": 48, "batch_size": 32},
}


def merge(base: Dict[str, Any], update: Dict[str, Any], where: str) -> None:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise KeyError(f"config: unknown key {path!r}")
        if isinstance(base[key], dict) and path != "model.kwargs":
            if not isinstance(value, dict):
                raise TypeError(f"config: {path!r} expects a mapping, got {value!r}")
            merge(base[key], value, path + ".")
        else:
            base[key] = value


def parse_override(text: str) -> Dict[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override: expected key.sub=value, got {text!r}")
    tree: Dict[str, Any] = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value) if value else None
    return tree


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then the YAML file at ``path``, then each ``key.sub=value`` override."""
    config = copy.deepcopy(DEFAULTS)
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise FileNotFoundError(f"config: cannot read {path!r}: {e.strerror}") from e
        if not isinstance(loaded, dict):
            raise TypeError(f"config: {path!r} must hold a mapping at the top level")
        merge(config, loaded, "")
    for text in overrides:
        merge(config, parse_override(text), "")
    validate(config)
    return config


def config_from_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """The config a checkpoint was trained with, on top of today's defaults (so that keys added
    since it was written have values)."""
    config = copy.deepcopy(DEFAULTS)
    merge(config, copy.deepcopy(state["config"]), "")
    return config


def validate(config: Dict[str, Any]) -> None:
    def check(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"config: {key} expected {expected}, got {_get(config, key)!r}")

    check(config["method"] in METHODS, "method", " | ".join(METHODS))
    check(config["data"]["name"] in ("synthetic", "voc", "cityscapes"), "data.name", "synthetic | voc | cityscapes")
    check(config["data"]["name"] == "synthetic" or bool(config["data"]["root"]), "data.root", "a folder for voc / cityscapes")
    check(0.0 < float(config["data"]["labeled_fraction"]) <= 1.0, "data.labeled_fraction", "a fraction in (0, 1]")
    for key in ("data.batch_size", "data.unlabeled_batch_size", "data.crop_size", "train.epochs",
                "train.eval_every", "train.checkpoint_every"):
        value = _get(config, key)
        check(isinstance(value, int) and value > 0, key, "a positive integer")
    check(config["train"]["amp"] in ("auto", "bf16", "fp16", "off", False), "train.amp", "auto | bf16 | fp16 | off")
    check(config["optim"]["name"] in ("sgd", "adamw"), "optim.name", "sgd | adamw")
    check(config["train"]["schedule"] in ("standard", "fast2x"), "train.schedule", "standard | fast2x")
    check(0.0 <= float(config["train"]["fast2x"]["low_res_fraction"]) <= 1.0, "train.fast2x.low_res_fraction",
          "a fraction")
    check(0.0 < float(config["train"]["fast2x"]["low_res_scale"]) <= 1.0, "train.fast2x.low_res_scale",
          "a fraction of the crop side")
    check(config["semi"]["teacher"] in ("ema", "shared"), "semi.teacher", "ema | shared")
    check(0.0 <= float(config["semi"]["threshold"]) <= 1.0, "semi.threshold", "a probability")
    st = config["semi"]["selftrain"]
    check(config["method"] != "selftrain" or bool(st["pseudo_dir"]), "semi.selftrain.pseudo_dir",
          "a folder written by python -m semiseg_fast.pseudo_label (--pseudo-dir)")
    check(0.0 <= float(st["threshold"]) <= 1.0, "semi.selftrain.threshold", "a probability")
    check(isinstance(st["soft"], bool), "semi.selftrain.soft", "true | false")
    check(isinstance(st["class_balanced"], bool), "semi.selftrain.class_balanced", "true | false")
    ps = config["semi"]["pseudoseg"]
    check(0.0 <= float(ps["gamma"]) <= 1.0, "semi.pseudoseg.gamma", "a weight in [0, 1]")
    check(float(ps["temperature"]) > 0.0, "semi.pseudoseg.temperature", "a positive number")
    check(0.0 <= float(ps["threshold"]) <= 1.0, "semi.pseudoseg.threshold", "a probability")
    check(isinstance(ps["soft"], bool), "semi.pseudoseg.soft", "true | false")
    check(isinstance(ps["classifier_backprop"], bool), "semi.pseudoseg.classifier_backprop", "true | false")
    check(0.0 <= float(ps["cutout_size"]) <= 1.0, "semi.pseudoseg.cutout_size", "a fraction of the crop side")
    check(config["eval"]["mode"] in ("whole", "slide"), "eval.mode", "whole | slide")
    check(config["device"] in ("auto", "cpu", "cuda"), "device", "auto | cpu | cuda")


def _get(config: Dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def dump(config: Dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
