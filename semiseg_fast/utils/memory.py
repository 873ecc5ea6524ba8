"""Measuring what autograd keeps alive between forward and backward."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Runs ``fn()`` and returns (its output, bytes of distinct storages autograd saved for backward).

    Storages are counted once however many saved tensors view them, and tensors that are
    inputs of ``fn`` count too: they are what the graph keeps alive.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _cpp_ops():
    from .._backend import cpp_available

    if not cpp_available():
        raise RuntimeError("the C++ extension semiseg_fast._C is not built")
    return torch.ops.semiseg_fast


def cpu_cache_info() -> dict:
    """Bytes of freed CPU output buffers kept for reuse, and the budget for them.

    The CPU ops recycle their large outputs (gradients, per-pixel maps): a fresh allocation
    costs its page faults on first write, as much as the op itself at real shapes. Blocks are kept
    by size class (four per power of two), so shapes that vary from call to call share them. The budget
    comes from SEMISEG_FAST_CPU_CACHE_MB (default 1024) or :func:`set_cpu_cache_limit`.
    """
    ops = _cpp_ops()
    return {"cached_bytes": int(ops._cpp_cache_bytes()), "limit_bytes": int(ops._cpp_cache_limit())}


def empty_cpu_cache() -> None:
    """Returns every cached CPU buffer to the system (like torch.cuda.empty_cache)."""
    _cpp_ops()._cpp_cache_empty()


def set_cpu_cache_limit(limit_bytes: int) -> None:
    """Sets the budget of cached CPU buffers in bytes; 0 disables caching. Trims the cache to it."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
        raise ValueError(f"limit_bytes: expected an int >= 0, got {limit_bytes!r}")
    _cpp_ops()._cpp_cache_set_limit(limit_bytes)
