"""Measuring what autograd keeps alive between forward and backward."""
from __future__ import annotations

from typing import Callable

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
