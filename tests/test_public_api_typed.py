"""The public API is typed: every parameter and return of the functions and methods that
``semiseg_fast``, ``semiseg_fast.u2pl`` and ``semiseg_fast.mixing`` export is annotated, and the
package ships ``py.typed``."""

import inspect
import os

import pytest

import semiseg_fast
from semiseg_fast import mixing, u2pl


def _public(module):
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    return [(f"{module.__name__}.{n}", getattr(module, n)) for n in names]


def _callables():
    for name, obj in _public(semiseg_fast) + _public(u2pl) + _public(mixing):
        if inspect.isclass(obj) and obj.__module__.startswith("semiseg_fast"):
            for method in ("__init__", "forward", "__call__"):
                if method in vars(obj):
                    yield f"{name}.{method}", vars(obj)[method]
        elif inspect.isfunction(obj) and obj.__module__.startswith("semiseg_fast"):
            yield name, obj


def test_py_typed_is_shipped():
    assert os.path.isfile(os.path.join(os.path.dirname(semiseg_fast.__file__), "py.typed"))


@pytest.mark.parametrize("name, fn", list(_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_annotated(name, fn):
    sig = inspect.signature(fn)
    missing = [p.name for p in sig.parameters.values() if p.name not in ("self", "cls") and p.annotation is p.empty]
    if sig.return_annotation is sig.empty:
        missing.append("return")
    assert not missing, f"{name}: not annotated: {missing}"
