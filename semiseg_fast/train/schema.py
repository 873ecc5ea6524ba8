"""How the training config is declared: each section is a dataclass whose fields are options,
each option with its type (the annotation), default, accepted values and help in one place.
From these come the default config, the check of every value (an error names the key), the
keys a resumed run may change, and docs/training.md.

Values travel as plain nested mappings (YAML files, overrides, ``config.yaml``, checkpoints);
:func:`validate` holds them to the schema."""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[Any], bool]


@dataclass(frozen=True)
class Accepts:
    """What an option accepts: a predicate over values of any type, and its words for errors and docs."""

    ok: Predicate
    expected: str


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


BOOLEAN = Accepts(lambda v: isinstance(v, bool), "true | false")
POSITIVE_INT = Accepts(lambda v: is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = Accepts(lambda v: is_int(v) and v >= 0, "an integer >= 0")
SEED = Accepts(lambda v: is_int(v) and 0 <= v < 2**63, "an integer in [0, 2**63)")  # torch seeds are int64
POSITIVE_NUMBER = Accepts(lambda v: is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Accepts(lambda v: is_number(v) and v >= 0, "a number >= 0")
UNIT_INTERVAL = Accepts(lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
NON_EMPTY_STRING = Accepts(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
OPTIONAL_FOLDER = Accepts(lambda v: v is None or isinstance(v, str), "a folder")
MAPPING = Accepts(lambda v: v is None or isinstance(v, dict), "a mapping of keyword arguments")


def choice(*names: str) -> Accepts:
    return Accepts(lambda v: v in names, " | ".join(names))


def number_in(low: float, high: float, expected: str, low_open: bool = False, high_open: bool = False) -> Accepts:
    def ok(v: Any) -> bool:
        return is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Accepts(ok, expected)


def optional(accepts: Accepts, expected: str) -> Accepts:
    return Accepts(lambda v: v is None or accepts.ok(v), expected)


def option(
    default: Any,
    help: str,
    accepts: Accepts,
    *,
    resume_adjustable: bool = False,
    path: bool = False,
    free_form: bool = False,
) -> Any:
    """A config option. ``resume_adjustable``: a resumed run may change it (it does not change the
    weights); ``path``: a folder that may be named by another path to the same place;
    ``free_form``: a mapping with any keys, handed to user code as it is."""
    metadata = dict(help=help, accepts=accepts, resume_adjustable=resume_adjustable, path=path, free_form=free_form)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """A nested section (a dataclass of options) as a field of its parent section."""
    return dataclasses.field(default_factory=cls)


Fail = Callable[[str, str], None]  # fail(key, expected)


class Section:
    """Base of the config sections. ``check`` holds the rules between options of the section,
    given the section's values, the whole config and ``fail(key, expected)``."""

    @classmethod
    def check(cls, values: dict[str, Any], config: dict[str, Any], fail: Fail) -> None:
        pass


@dataclass(frozen=True)
class Option:
    key: str  # dotted
    default: Any
    help: str
    accepts: Accepts
    type: str
    resume_adjustable: bool
    path: bool
    free_form: bool


@dataclass
class Node:
    """A section of the config tree: its class (for cross-option checks) and its children."""

    cls: type
    children: dict[str, Option | Node]


def node_of(cls: type, prefix: str = "", extra: dict[str, type] | None = None) -> Node:
    """The tree of a section dataclass; ``extra`` adds sub-sections by name (methods' sections)."""
    hints = typing.get_type_hints(cls)
    children: dict[str, Option | Node] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        kind = hints[f.name]
        if isinstance(kind, type) and issubclass(kind, Section):
            children[f.name] = node_of(kind, key + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        m = f.metadata
        children[f.name] = Option(
            key, default, m["help"], m["accepts"], _type_name(kind), m["resume_adjustable"], m["path"], m["free_form"]
        )
    for name, sub in (extra or {}).items():
        if name in children:
            raise ValueError(f"config: the section {prefix + name!r} is declared twice")
        children[name] = node_of(sub, prefix + name + ".")
    return Node(cls, children)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) if isinstance(kind, type) else str(kind).replace("typing.", "")


def options(node: Node) -> Iterator[Option]:
    for child in node.children.values():
        if isinstance(child, Node):
            yield from options(child)
        else:
            yield child


def defaults(node: Node) -> dict[str, Any]:
    return {
        name: defaults(child) if isinstance(child, Node) else copy.deepcopy(child.default)
        for name, child in node.children.items()
    }


def merge(node: Node, base: dict[str, Any], update: dict[str, Any], where: str = "") -> None:
    """Sets ``update``'s values into ``base``; a key the schema does not have is an error naming it."""
    for key, value in update.items():
        path = f"{where}{key}"
        child = node.children.get(key)
        if child is None:
            raise KeyError(f"config: unknown key {path!r}")
        if isinstance(child, Node):
            if not isinstance(value, dict):
                raise TypeError(f"config: {path!r} expects a mapping, got {value!r}")
            merge(child, base[key], value, path + ".")
        else:
            base[key] = value


def get(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def validate(node: Node, config: dict[str, Any]) -> None:
    """Every option's value, then each section's rules; the first bad value raises an error
    naming its key and what it expects."""

    def fail(key: str, expected: str) -> None:
        raise ValueError(f"config: {key} expected {expected}, got {get(config, key)!r}")

    def walk(n: Node, values: dict[str, Any]) -> None:
        for name, child in n.children.items():
            if isinstance(child, Node):
                walk(child, values[name])
            elif not child.accepts.ok(values[name]):
                fail(child.key, child.accepts.expected)
        n.cls.check(values, config, fail)

    walk(node, config)
