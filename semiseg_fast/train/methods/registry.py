"""Methods by name. The built-in ones register themselves when their package is imported; a
user's method registers when its module is imported, which ``method=package.module:Class`` does."""

from __future__ import annotations

import importlib

from .base import Method

_METHODS: dict[str, type[Method]] = {}
_DEFAULT: list[str] = []


def register(cls: type[Method] | None = None, *, default: bool = False):
    """Class decorator: ``@register`` (or ``@register(default=True)`` for the method a run takes
    when none is named)."""

    def add(method: type[Method]) -> type[Method]:
        if not (isinstance(method, type) and issubclass(method, Method)):
            raise TypeError(f"register: expected a subclass of Method, got {method!r}")
        for attr in ("name", "description"):
            if not isinstance(getattr(method, attr, None), str) or not getattr(method, attr):
                raise TypeError(f"register: {method.__name__}.{attr} must be a non-empty string")
        known = _METHODS.get(method.name)
        if known is not None and known is not method:
            raise ValueError(f"register: a method named {method.name!r} exists already ({known.__module__})")
        _METHODS[method.name] = method
        if default:
            _DEFAULT[:] = [method.name]
        return method

    return add if cls is None else add(cls)


def names() -> list[str]:
    """The registered methods' names, sorted (whatever order their modules imported in)."""
    return sorted(_METHODS)


def default_name() -> str:
    return _DEFAULT[0] if _DEFAULT else next(iter(_METHODS))


def get(value: str) -> type[Method]:
    """The method a config's ``method`` names: a registered name, or ``package.module:Class``
    (imported, and registered if it is not yet)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"config: method expected {' | '.join(names())} or package.module:Class, got {value!r}")
    if ":" not in value:
        if value not in _METHODS:
            raise ValueError(f"config: method expected {' | '.join(names())} or package.module:Class, got {value!r}")
        return _METHODS[value]
    module_name, _, attr = value.partition(":")
    try:
        method = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config: method {value!r} cannot be imported: {e}") from e
    return register(method)
