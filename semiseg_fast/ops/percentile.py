"""entropy_percentile: NumPy's percentile of the valid pixels, exactly, as a device tensor."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from .. import _checks, reference
from .._backend import resolve


@torch.library.custom_op("semiseg_fast::entropy_percentile", mutates_args=())
def _percentile_op(values: torch.Tensor, valid: torch.Tensor | None, q: Sequence[float], backend: str) -> torch.Tensor:
    if backend == "cpp":
        return torch.ops.semiseg_fast._cpp_percentile(values, valid, list(q))
    from ..triton.percentile import percentile as triton_percentile

    return triton_percentile(values, valid, list(q))


@_percentile_op.register_fake
def _(values, valid, q, backend):
    return values.new_empty((len(q),), dtype=torch.float32)


def _check_q(q) -> tuple[list[float], bool]:
    scalar = isinstance(q, numbers.Real) and not isinstance(q, bool)
    qs = [q] if scalar else list(q) if isinstance(q, (list, tuple)) else None
    if not qs or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in qs):
        raise TypeError(f"q: expected a percentile in [0, 100] or a non-empty list of them, got {q!r}")
    for v in qs:
        _checks.number(v, "q", low=0.0, high=100.0)
    return [float(v) for v in qs], scalar


def entropy_percentile(
    entropy: torch.Tensor, valid: torch.Tensor | None = None, q: float | Sequence[float] = 80.0
) -> torch.Tensor:
    """``numpy.percentile(entropy[valid], q)`` (the default "linear" method) without leaving the device.

    Exact: equal to NumPy's result computed in float64, rounded to fp32; ties and -0.0 included
    (-0.0 and +0.0 count as one value, returned as +0.0). No size cap and no sort: the needed
    order statistics are selected (C++ ``nth_element`` on the CPU, a Triton radix select on
    CUDA), and nothing is copied to the host.

    Args:
        entropy: floating tensor of any shape (computed in fp32).
        valid: optional bool tensor of the same shape; only its True entries count.
        q: a percentile in [0, 100], or a list of them (U2PL needs alpha_t and 100 - alpha_t).

    Returns:
        fp32: a 0-dim tensor for a single q, else shape (len(q),). NaN if no entry is valid or a
        valid entry is NaN (NumPy would raise or return NaN). Not differentiable.
    """
    entropy = _checks.tensor(entropy, "entropy")
    if not entropy.dtype.is_floating_point:
        raise TypeError(f"entropy: expected a floating dtype, got {entropy.dtype}")
    if valid is not None:
        valid = _checks.tensor(valid, "valid")
        if valid.dtype != torch.bool:
            raise TypeError(f"valid: expected a bool tensor, got {valid.dtype}")
        if valid.shape != entropy.shape:
            raise ValueError(f"valid: expected the shape of entropy {tuple(entropy.shape)}, got {tuple(valid.shape)}")
        _checks.same_device(entropy, valid, "valid", "entropy")
    qs, scalar = _check_q(q)
    impl = resolve(entropy.device)
    if impl == "reference":
        out = reference.entropy_percentile(entropy, valid, qs)
    else:
        out = _percentile_op(entropy.detach(), valid, qs, impl)
    return out[0] if scalar else out
