"""The training configuration: its schema (one dataclass per section; each method declares its
own section, ``semi.<method>``, in its file), a YAML file on top of the defaults, then
``key.sub=value`` overrides.

Every key has a default, so an unknown key in a file or on the command line is an error that
names it rather than a silently ignored typo; :func:`validate` checks the type and range of every
value, naming the key. A resumed run takes its config from its checkpoint (:func:`resume_config`).
docs/training.md is generated from this schema (``make docs``)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from ..models.build import BUILT_IN_MODEL
from ..models.deeplab import BACKBONES
from ..models.pretrained import DEPTH_PREFIX, EMBEDDED_WIDTH, PRETRAINED_SOURCES, weights_file
from . import methods, schema
from .schema import (
    BOOLEAN,
    MAPPING,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    OPTIONAL_FOLDER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    SEED,
    UNIT_INTERVAL,
    Accepts,
    Fail,
    Section,
    choice,
    is_int,
    is_number,
    number_in,
    option,
    optional,
    section,
)
from .start import encoder_width

TABLES = "docs/experiments.md"  # where the experiments behind defaults are


def _formats(template: Any) -> bool:
    try:
        template.format(method="m", seed=0)
        return True
    except (KeyError, IndexError, ValueError, AttributeError):
        return False


@dataclass
class DataConfig(Section):
    name: str = option(
        "synthetic",
        "synthetic (the embedded dataset, generated from data.* settings) | voc | cityscapes",
        choice("synthetic", "voc", "cityscapes"),
    )
    root: str | None = option(
        None,
        "folder of a voc / cityscapes dataset with the split files; synthetic: a folder with split files of "
        "the pool's image ids (sceneNNNNNN lines, as python -m semiseg_fast.select_labels writes them), which "
        "then replace data.labeled_fraction's draw",
        OPTIONAL_FOLDER,
        path=True,
    )
    num_classes: int | None = option(
        None,
        "number of classes of a folder dataset (integer >= 2); the synthetic set knows its own",
        optional(Accepts(lambda v: is_int(v) and v >= 2, ""), "an integer >= 2"),
    )
    labeled_split: str = option("labeled.txt", "split file of the labeled images, under data.root", NON_EMPTY_STRING)
    unlabeled_split: str = option(
        "unlabeled.txt", "split file of the unlabeled images, under data.root", NON_EMPTY_STRING
    )
    val_split: str = option("val.txt", "split file of the validation images, under data.root", NON_EMPTY_STRING)
    synthetic_train: int = option(800, "images in the synthetic training pool", POSITIVE_INT)
    synthetic_val: int = option(120, "synthetic validation images", POSITIVE_INT)
    image_size: int = option(
        64, "side of a synthetic image, in pixels (>= 8)", Accepts(lambda v: is_int(v) and v >= 8, "an integer >= 8")
    )
    labeled_fraction: float = option(
        0.125,
        "synthetic only: the labeled share of the pool, in (0, 1]; the rest is unlabeled",
        number_in(0, 1, "a fraction in (0, 1]", low_open=True),
    )
    split_seed: int = option(
        2024,
        "synthetic only: seeds the draw of the labeled images from the pool; the run's seed leaves it "
        "alone, so that every seed and method learns from the same labeled images (integer in [0, 2**63))",
        SEED,
    )
    crop_size: int = option(56, "side of the training crops, in pixels", POSITIVE_INT)
    scale_range: list[float] = option(
        [0.75, 1.5],
        "[min, max] random rescale of a training image before cropping",
        Accepts(
            lambda v: (
                isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(s) and s > 0 for s in v) and v[0] <= v[1]
            ),
            "[min, max], two positive numbers with min <= max",
        ),
    )
    batch_size: int = option(8, "labeled images per step and process", POSITIVE_INT)
    unlabeled_batch_size: int = option(8, "unlabeled (or pseudo-labeled) images per step and process", POSITIVE_INT)
    num_workers: int = option(
        0,
        "data worker processes per data stream (0: augment on the training thread)",
        NON_NEGATIVE_INT,
        resume_adjustable=True,
    )
    ignore_index: int = option(
        255,
        "label value of pixels without a label, in [0, 255]",
        Accepts(lambda v: is_int(v) and 0 <= v <= 255, "an integer in [0, 255]"),
    )

    @classmethod
    def check(cls, values, config, fail: Fail) -> None:
        if values["name"] != "synthetic" and not values["root"]:
            fail("data.root", "a folder for voc / cityscapes")
        if values["name"] == "synthetic" and values["root"]:
            for key in ("labeled_split", "unlabeled_split"):
                if not os.path.isfile(os.path.join(values["root"], values[key])):
                    fail("data.root", f"a folder holding data.{key}={values[key]!r} with data.name=synthetic")


@dataclass
class ModelConfig(Section):
    name: str = option(
        "deeplabv3plus",
        "deeplabv3plus, or package.module:Class of your own, called with num_classes= and the kwargs",
        NON_EMPTY_STRING,
    )
    kwargs: dict[str, Any] | None = option(
        {"width": 32, "rep_dim": 64},
        "keyword arguments of the model; model.kwargs.width=16 sets one and keeps the others",
        MAPPING,
        free_form=True,
    )
    backbone: str = option(
        "small",
        "the built-in model's encoder: small (a residual net for small images, model.kwargs.width channels) | "
        "resnet50 | resnet101 (ResNets in torchvision's layout, U2PL's decoder; docs/backbones.md)",
        choice(*BACKBONES),
    )
    output_stride: int = option(
        8,
        "the built-in model's output stride: 8 | 16 (ResNets; the small encoder has 8)",
        Accepts(lambda v: v in (8, 16) and not isinstance(v, bool), "8 | 16"),
    )
    pretrained: str = option(
        "auto",
        "the encoder's starting weights: embedded (shipped, for the small encoder at width 32: "
        "python -m semiseg_fast.pretrain) | imagenet (ResNets: torchvision's ImageNet file, through torch.hub's "
        "cache or a download; docs/backbones.md) | none | depth:RUN_DIR (the encoder and the shared decoder modules "
        "of a python -m semiseg_fast.depth run, docs/depth.md) | a file with the encoder's state dict (a "
        "torchvision ResNet file loads as it is); auto: embedded for the small encoder at width 32, imagenet for "
        "ResNets",
        Accepts(lambda v: isinstance(v, str) and bool(v), "auto | embedded | imagenet | none | depth:RUN_DIR | a file"),
    )

    @classmethod
    def check(cls, values, config, fail: Fail) -> None:
        if values["name"] != BUILT_IN_MODEL and (
            values["backbone"] != "small" or values["pretrained"] not in ("auto", "none")
        ):
            fail(
                "model.pretrained" if values["backbone"] == "small" else "model.backbone",
                f"the default with model.name={values['name']} (only the built-in model has a backbone)",
            )
        if values["backbone"] == "small" and values["output_stride"] != 8:
            fail("model.output_stride", "8 with model.backbone=small")
        source = values["pretrained"]
        if source in PRETRAINED_SOURCES:
            width = encoder_width(values)
            if source == "embedded" and (values["backbone"] != "small" or width != EMBEDDED_WIDTH):
                fail(
                    "model.pretrained",
                    f"a weights file or none: the embedded weights are the small encoder's "
                    f"at width {EMBEDDED_WIDTH} (model.backbone={values['backbone']}, width {width})",
                )
            if source == "imagenet" and values["backbone"] == "small":
                fail("model.pretrained", "embedded, none or a weights file with model.backbone=small")
        elif source.startswith(DEPTH_PREFIX):
            if not os.path.isfile(weights_file(source)):
                fail("model.pretrained", f"depth:RUN_DIR with a finished depth run there (no {weights_file(source)})")
        elif not os.path.isfile(source):
            fail(
                "model.pretrained",
                "auto | embedded | imagenet | none | depth:RUN_DIR | an existing weights file (no file there)",
            )


@dataclass
class OptimConfig(Section):
    name: str = option("adamw", "adamw (fused step) | sgd (Nesterov)", choice("adamw", "sgd"))
    lr: float | None = option(
        None,
        "peak learning rate of the encoder; null: 0.002 from a pretrained encoder, 0.008 from scratch, the best "
        f"found for each ({TABLES}#a-pretrained-start-modelpretrained, "
        f"{TABLES}#the-learning-rate-optimlr-and-trainfast2xlow_res_lr)",
        optional(POSITIVE_NUMBER, "null or a positive number"),
    )
    momentum: float = option(
        0.9, "SGD's momentum, in [0, 1); adamw ignores it", number_in(0, 1, "a number in [0, 1)", high_open=True)
    )
    head_lr_mult: float | None = option(
        None,
        "the decoder and heads train at this multiple of optim.lr, the encoder at optim.lr; null: 10 when the "
        "encoder starts pretrained (as U2PL and UniMatch), 1 otherwise",
        optional(POSITIVE_NUMBER, "null or a positive number"),
    )
    weight_decay: float = option(1e-4, "decoupled weight decay (adamw) or L2 penalty (sgd), >= 0", NON_NEGATIVE_NUMBER)
    poly_power: float = option(0.9, "exponent of the poly decay after the warm-up", NON_NEGATIVE_NUMBER)
    warmup_steps: int = option(50, "linear warm-up, in batches of the configured size", NON_NEGATIVE_INT)

    @classmethod
    def check(cls, values, config, fail: Fail) -> None:
        if values["name"] == "sgd" and values["momentum"] <= 0:
            fail("optim.momentum", "a number in (0, 1) with sgd (Nesterov)")


@dataclass
class OhemConfig(Section):
    threshold: float = option(
        0.7, "pixels whose true class has at most this probability are kept, in [0, 1]", UNIT_INTERVAL
    )
    min_kept: int = option(
        100000,
        "and at least this many of the hardest (U2PL's Cityscapes value; with fewer valid pixels in a batch, all "
        "are kept: plain cross-entropy)",
        NON_NEGATIVE_INT,
    )


@dataclass
class Fast2xConfig(Section):
    low_res_fraction: float = option(
        0.8,
        f"share of the budget's images on reduced crops, in [0, 1] "
        f"({TABLES}#fast2x-over-eight-seeds-trainfast2xlow_res_fraction)",
        UNIT_INTERVAL,
    )
    low_res_scale: float = option(
        0.6,
        "side of the reduced crops as a fraction of data.crop_size, in (0, 1]",
        number_in(0, 1, "a fraction of the crop side in (0, 1]", low_open=True),
    )
    low_res_batch: int = option(
        2, "batches per reduced step: the reduced phase sees the same images in fewer steps", POSITIVE_INT
    )
    low_res_lr: float | None = option(
        0.5,
        "the reduced phase's rate, held, as a factor of optim.lr; null follows the run's poly curve "
        f"({TABLES}#the-learning-rate-optimlr-and-trainfast2xlow_res_lr)",
        optional(POSITIVE_NUMBER, "null or a positive factor of optim.lr"),
    )
    full_res_lr: float | None = option(
        1.0,
        "the full-size phase restarts at this factor of optim.lr, in (0, 1], and decays to 0; null continues the "
        "run's curve",
        optional(number_in(0, 1, "", low_open=True), "null or a factor of optim.lr in (0, 1]"),
    )


@dataclass
class TrainConfig(Section):
    epochs: int = option(
        16,
        "passes over the unlabeled pool (the labeled one for supervised folder runs): the budget of every method",
        POSITIVE_INT,
    )
    steps: int | None = option(
        None,
        "the budget in batches instead (null: train.epochs passes), e.g. all labels at the steps of a 1/8 run; "
        "the last epoch may be partial",
        optional(POSITIVE_INT, "a positive integer or null"),
    )
    eval_every: int = option(
        400, "evaluate every this many optimizer steps, and at the end", POSITIVE_INT, resume_adjustable=True
    )
    checkpoint_every: int = option(
        200, "write last.pt every this many optimizer steps, and at the end", POSITIVE_INT, resume_adjustable=True
    )
    channels_last: bool = option(True, "channels_last model and inputs", BOOLEAN)
    amp: str = option(
        "auto",
        "auto | bf16 | fp16 | off; auto: bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, off on other "
        f"CPUs ({TABLES}#autocast-on-cpus-without-native-bf16-trainampauto)",
        Accepts(lambda v: v in ("auto", "bf16", "fp16", "off", False), "auto | bf16 | fp16 | off"),
    )
    fused_upsample: bool = option(
        True,
        "the training losses read the decoder's logits at its own resolution and upsample them to the labels' "
        "size (bilinear, align_corners=True) inside the fused kernels, so the full-size logits and their gradient "
        "never exist; false: upsample the logits first with F.interpolate. The same losses to float rounding; "
        "evaluation upsamples either way",
        BOOLEAN,
    )
    grid_images: int = option(
        6,
        "validation images in predictions.png and the TensorBoard grid (0: none)",
        NON_NEGATIVE_INT,
        resume_adjustable=True,
    )
    progress: bool = option(
        True,
        "show the progress bar (a plain line every 10 s when the output is not a terminal)",
        BOOLEAN,
        resume_adjustable=True,
    )
    tensorboard: bool = option(
        False,
        "also write a TensorBoard log of the scalars and prediction grids into the run folder (needs the "
        "tensorboard package: pip install semiseg_fast[tensorboard])",
        BOOLEAN,
        resume_adjustable=True,
    )
    schedule: str = option(
        "standard",
        "standard | fast2x (most of the budget on reduced crops, see the train.fast2x keys)",
        choice("standard", "fast2x"),
    )
    fast2x: Fast2xConfig = section(Fast2xConfig)
    supervised_loss: str = option(
        "ce",
        "ce | ohem: the loss on labeled images, cross-entropy or U2PL's online hard example mining (train.ohem)",
        choice("ce", "ohem"),
    )
    ohem: OhemConfig = section(OhemConfig)


@dataclass
class SemiConfig(Section):
    """Settings every semi-supervised method shares; each method's own keys are ``semi.<method>``."""

    teacher: str = option("ema", "ema | shared (the student itself, without gradients)", choice("ema", "shared"))
    ema_decay: float = option(0.99, "decay of the EMA teacher per batch, in [0, 1]", UNIT_INTERVAL)
    unsupervised_weight: float = option(1.0, "weight of the unsupervised loss", NON_NEGATIVE_NUMBER)
    rampup: float = option(
        0.0,
        "share of the budget over which the unsupervised weight rises from 0 to semi.unsupervised_weight "
        "along exp(-5 (1 - t)^2) (Laine and Aila), in [0, 1]; 0: full weight from the first step",
        UNIT_INTERVAL,
    )
    strong_color: bool = option(True, "colour jitter, grayscale and blur on the strong view", BOOLEAN)
    cutmix_p: float = option(0.5, "probability of CutMix on the strong view", UNIT_INTERVAL)


@dataclass
class EvalConfig(Section):
    mode: str = option("whole", "whole (the full image at once) | slide (windows)", choice("whole", "slide"))
    window: int = option(64, "slide: window side in pixels", POSITIVE_INT)
    stride: int = option(48, "slide: stride in pixels, 0 < stride <= eval.window", POSITIVE_INT)
    batch_size: int = option(32, "images (or windows) per forward pass", POSITIVE_INT, resume_adjustable=True)
    pseudo_images: int = option(
        256,
        "unlabeled images, spread over the split, whose pseudo-labels are measured against their ground truth "
        "at each evaluation (metrics.csv's pseudo_* columns; whole images, never windows); 0: off",
        NON_NEGATIVE_INT,
        resume_adjustable=True,
    )

    @classmethod
    def check(cls, values, config, fail: Fail) -> None:
        if values["mode"] == "slide" and values["stride"] > values["window"]:
            fail(
                "eval.stride",
                f"at most eval.window={values['window']} (a larger stride leaves pixels that no window covers)",
            )


@dataclass
class RunConfig(Section):
    method: str = option(
        "",  # the registry's default method (see tree())
        "a registered method (python -m semiseg_fast.train --list-methods) or package.module:Class of your own",
        NON_EMPTY_STRING,
    )
    seed: int = option(0, "seeds the weights, the data order and every augmentation (integer in [0, 2**63))", SEED)
    deterministic: bool = option(
        False,
        "deterministic algorithms only: a rerun, or a killed and resumed run, ends with bit-identical weights",
        BOOLEAN,
    )
    device: str = option("auto", "auto | cpu | cuda (auto: cuda when a GPU is present)", choice("auto", "cpu", "cuda"))
    out_dir: str = option(
        "runs/{method}-seed{seed}",
        "the run folder; may hold {method} and {seed}",
        Accepts(lambda v: isinstance(v, str) and bool(v) and _formats(v), "a folder (may hold {method} and {seed})"),
    )
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig)
    train: TrainConfig = section(TrainConfig)
    semi: SemiConfig = section(SemiConfig)
    eval: EvalConfig = section(EvalConfig)

    @classmethod
    def check(cls, values, config, fail: Fail) -> None:
        try:
            method = methods.get(values["method"])
        except ValueError:
            fail("method", f"{' | '.join(methods.names())} or package.module:Class")
        method.check_config(config, fail)


def tree(method_names: tuple[str, ...] | None = None) -> schema.Node:
    """The config's schema: the sections above, and each registered method's own section under
    ``semi``; the default method is the registry's."""
    return _tree(tuple(methods.names()) if method_names is None else method_names)


@functools.lru_cache(maxsize=8)
def _tree(method_names: tuple[str, ...]) -> schema.Node:
    extra = {m.name: m.config for m in map(methods.get, method_names) if m.config is not None}
    root = schema.node_of(RunConfig)
    root.children["semi"] = schema.node_of(SemiConfig, "semi.", extra)
    method = root.children["method"]
    root.children["method"] = dataclasses.replace(method, default=methods.default_name())
    return root


def default_config() -> dict[str, Any]:
    return schema.defaults(tree())


def _keys(flag: str) -> tuple[str, ...]:
    return tuple(o.key for o in schema.options(tree()) if getattr(o, flag))


def resume_adjustable_keys() -> tuple[str, ...]:
    """Keys a resumed run may change: they decide what is shown, logged, evaluated or how data is
    loaded, never which weights training produces."""
    return _keys("resume_adjustable")


def path_keys() -> tuple[str, ...]:
    """Folders: a resumed run may name them by another path (relative, absolute, through a link)."""
    return _keys("path")


def free_form_keys() -> tuple[str, ...]:
    """Mappings handed to user code as they are (any keys): ``model.kwargs.width=16`` sets one
    entry and keeps the others, while ``model.kwargs={...}`` (or a file) replaces the whole mapping."""
    return _keys("free_form")


# keys a user method names: it is imported before the config's schema is built
def _import_user_method(value: Any) -> None:
    if isinstance(value, str) and ":" in value:
        methods.get(value)


def merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Sets ``update``'s values into ``base``; an unknown key is an error that names it."""
    _refuse_renamed(update)
    schema.merge(tree(), base, update)


def renamed_keys() -> dict[str, str]:
    """Keys that moved, as each method declares them: former dotted key -> key. A file or override
    naming a former key is told the new one; a checkpoint holding it resumes with its value."""
    return {old: f"semi.{m.name}.{new}" for m in map(methods.get, methods.names()) for old, new in m.renamed.items()}


def _refuse_renamed(update: dict[str, Any]) -> None:
    for old, new in renamed_keys().items():
        if _has(update, old):
            raise KeyError(f"config: unknown key {old!r}: it is now {new!r}")


def _has(config: dict[str, Any], key: str) -> bool:
    try:
        schema.get(config, key)
        return True
    except (KeyError, TypeError):
        return False


def validate(config: dict[str, Any]) -> None:
    """Types and ranges of every key, then the rules between keys; the first bad one raises an
    error naming it."""
    _import_user_method(config.get("method"))
    schema.validate(tree(), config)


def _get(config: dict[str, Any], key: str) -> Any:
    return schema.get(config, key)


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


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
        if ".".join(parts[:n]) in free_form_keys():
            parent = _get(config, ".".join(parts[: n - 1]))
            if parent[parts[n - 1]] is None:
                parent[parts[n - 1]] = {}
            _set_nested(parent[parts[n - 1]], parts[n:], value, ".".join(parts[:n]))
            return
    merge(config, parse_override(text))


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
    config = _apply_command_line(default_config(), path, overrides)
    validate(config)
    return config


def _apply_command_line(config: dict[str, Any], path: str | None, overrides: Iterable[str]) -> dict[str, Any]:
    loaded = _read_yaml(path) if path else {}
    overrides = list(overrides)
    # a user's method first: its section must be in the schema before any of its keys is read
    for value in [loaded.get("method")] + [
        parse_override(t).get("method") for t in overrides if t.startswith("method=")
    ]:
        _import_user_method(value)
    _add_missing_sections(config)
    merge(config, loaded)
    for text in overrides:
        apply_override(config, text)
    return config


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except OSError as e:
        raise FileNotFoundError(f"config: cannot read {path!r}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config: {path!r} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise TypeError(f"config: {path!r} must hold a mapping at the top level")
    return loaded


def _add_missing_sections(config: dict[str, Any]) -> None:
    """Default sections of the methods registered since ``config`` was made."""
    for name, value in default_config()["semi"].items():
        config["semi"].setdefault(name, value)


# keys added after runs were already being saved, with the value those runs trained with (their
# defaults differ from today's): a checkpoint without the key resumes as it was started
FORMER_DEFAULTS = {
    "semi.cps.depth_weight": 0.0,
    "semi.cps.mask": "box",
    "semi.cps.mix_labeled": False,
    "semi.cps.strong_color": False,
    "semi.cps.targets": "networks",
    "semi.depthmix.depth_weight": 0.0,
    "semi.depthmix.level": "pixel",
    "semi.rrn.depth_weight": 0.0,
    "semi.rrn.mask": "box",
    "semi.rrn.mix_labeled": False,
    "semi.rrn.strong_color": False,
    "semi.rrn.targets": "networks",
    "train.fast2x.full_res_lr": None,
    "train.fast2x.low_res_batch": 1,
    "train.fast2x.low_res_lr": None,
    "train.fused_upsample": False,
}


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
    saved = copy.deepcopy(state["config"])
    _import_user_method(saved.get("method"))
    config = default_config()
    for key, value in FORMER_DEFAULTS.items():
        _set_existing(config, key, value)
    for old, new in renamed_keys().items():
        if _has(saved, old):
            parent, _, leaf = old.rpartition(".")
            value = schema.get(saved, parent).pop(leaf)
            new_parent, _, new_leaf = new.rpartition(".")
            node = saved
            for part in new_parent.split("."):
                node = node.setdefault(part, {})
            node[new_leaf] = value
    merge(config, saved)
    return config


def resume_config(
    state: dict[str, Any], checkpoint: str, path: str | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """The config to resume ``checkpoint`` with: the checkpoint's own, written to the checkpoint's
    folder. A command line (file ``path``, ``overrides``) may repeat it and change the keys of
    :func:`resume_adjustable_keys`; any other change is refused with an error naming the keys."""
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
    ignored = set(resume_adjustable_keys()) | {"out_dir"}
    standard = saved["train"]["schedule"] == config["train"]["schedule"] == "standard"
    own_section = methods.get(config["method"]).name
    return [
        key
        for key in differing_keys(saved, config)
        if key not in ignored
        and not (standard and key.startswith("train.fast2x."))  # settings of a schedule not in use
        and not _other_methods_key(key, own_section)
        and not (key in path_keys() and _same_path(_lookup(saved, key), _lookup(config, key)))
    ]


def _other_methods_key(key: str, own_section: str) -> bool:
    """A key of another method's section (semi.<name>.*): it cannot change this run (and a former
    default there must not refuse every run saved before it)."""
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "semi" and parts[1] != own_section and parts[1] in methods.names()


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
    numbers_equal = all(is_number(v) for v in (a, b)) and a == b
    return [] if same or numbers_equal else [where[:-1]]


def _lookup(config: dict[str, Any], key: str) -> Any:
    try:
        return _get(config, key)
    except (KeyError, TypeError):
        return "(unset)"
