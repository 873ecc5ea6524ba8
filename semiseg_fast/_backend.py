"""Which implementation runs an op: plain PyTorch, the C++ CPU kernels or the Triton kernels.

``auto`` (the default) picks ``cpp`` for CPU tensors and ``triton`` for CUDA tensors, falling
back to ``reference`` when the compiled extension or Triton is missing. The environment
variable ``SEMISEG_FAST_BACKEND`` and the context manager :func:`backend` override it.
With ``TRITON_INTERPRET=1`` the Triton kernels also run on CPU tensors, which is how they are
tested on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "reference", "cpp", "triton")
ENV_VAR = "SEMISEG_FAST_BACKEND"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("semiseg_fast_backend", default=None)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{what}: expected one of {', '.join(repr(b) for b in BACKENDS)}, got {name!r}")
    return name


def get_backend() -> str:
    """The requested backend name: the innermost :func:`backend` context, else the environment."""
    name = _override.get()
    if name is not None:
        return name
    return _check_name(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the ops inside the ``with`` block on backend ``name``.

    >>> with semiseg_fast.backend("reference"):
    ...     loss = semiseg_fast.fixmatch_loss(student, teacher)
    """
    token = _override.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _override.reset(token)


@functools.cache
def cpp_available() -> bool:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.semiseg_fast._cpp_*)
    except ImportError:
        return False
    return True


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(device: torch.device) -> str:
    """The concrete backend ('reference', 'cpp' or 'triton') for tensors on ``device``.

    Under torch.compile the choice is made once, when the function is traced.
    """
    return _resolve_kind(device.type)


def _resolve_kind(kind: str) -> str:
    name = get_backend()
    device = kind
    if name == "auto":
        if kind == "cpu" and cpp_available():
            return "cpp"
        if kind == "cuda" and triton_available():
            return "triton"
        return "reference"
    if name == "cpp":
        if kind != "cpu":
            raise RuntimeError(f"backend 'cpp' runs on CPU tensors only; got tensors on {device}")
        if not cpp_available():
            raise RuntimeError(
                "backend 'cpp': the C++ extension semiseg_fast._C is not built; "
                "run `pip install --no-build-isolation -e .` (or `make`)"
            )
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton': triton is not installed (pip install triton)")
        if kind == "cpu" and not triton_interpret():
            raise RuntimeError(
                "backend 'triton' on CPU tensors needs the interpreter: set TRITON_INTERPRET=1 before importing triton"
            )
        if kind not in ("cpu", "cuda"):
            raise RuntimeError(f"backend 'triton' supports CUDA tensors; got tensors on {device}")
    return name


# torch.compiler.assume_constant_result(_resolve_kind) without its import of torch._dynamo, about
# 2 s of `import semiseg_fast` (training pays it anyway: torch.optim imports it); the decorator
# only sets this flag (tests/ops/test_compile.py)
_resolve_kind._dynamo_marked_constant = True  # type: ignore[attr-defined]
