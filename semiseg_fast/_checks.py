"""Argument checks shared by the public ops. Every error names the argument and what was expected."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from .base import Normalizer, Reduction, not_ignored

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

REDUCTIONS = {"none": Reduction.NONE, "mean": Reduction.MEAN, "sum": Reduction.SUM}
NORMALIZERS = {
    "valid": Normalizer.VALID,
    "weighted": Normalizer.WEIGHTED,
    "total": Normalizer.TOTAL,
    "confident": Normalizer.CONFIDENT,
}


def tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def logits(x: object, name: str = "logits") -> torch.Tensor:
    x = tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}")
    if x.shape[1] < 2:
        raise ValueError(f"{name}: expected at least 2 classes in dim 1, got C={x.shape[1]}")
    return x


def shaped(t: object, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of exactly this shape and dtype."""
    t = tensor(t, name)
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise ValueError(f"{name}: expected shape {tuple(shape)} {dtype}, got {tuple(t.shape)} {t.dtype}")
    return t


def same_device(x: torch.Tensor, other: torch.Tensor, name: str, ref_name: str) -> None:
    if other.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} like {ref_name}, got {other.device}")


def pixel_map(
    t: object,
    name: str,
    x: torch.Tensor,
    x_name: str,
    dtypes: Sequence[torch.dtype],
    expected: str,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A per-pixel map of x's images: (N, H, W), with (H, W) the output ``size`` when the op resamples."""
    t = tensor(t, name)
    n, _, h, w = x.shape
    if size is not None:
        h, w = size
    if tuple(t.shape) != (n, h, w):
        raise ValueError(f"{name}: expected shape (N, H, W) = {(n, h, w)} matching {x_name}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected {expected}, got {t.dtype}")
    same_device(x, t, name, x_name)
    return t


def target(
    t: object, x: torch.Tensor, name: str = "target", x_name: str = "logits", size: tuple[int, int] | None = None
) -> torch.Tensor:
    return pixel_map(t, name, x, x_name, INT_DTYPES, "an integer dtype (uint8, int8, int16, int32, int64)", size)


def weight(
    t: object | None, x: torch.Tensor, x_name: str = "logits", size: tuple[int, int] | None = None
) -> torch.Tensor | None:
    if t is None:
        return None
    return pixel_map(t, "weight", x, x_name, FLOAT_DTYPES + (torch.bool,), "a floating or bool dtype", size)


def ignore_mask(
    t: object | None, x: torch.Tensor, x_name: str, size: tuple[int, int] | None = None
) -> torch.Tensor | None:
    if t is None:
        return None
    return pixel_map(t, "ignore_mask", x, x_name, INT_DTYPES + (torch.bool,), "a bool or integer dtype", size)


def output_size(size: object, x: torch.Tensor, align_corners: object) -> tuple[tuple[int, int] | None, bool]:
    """(size, align_corners) of an op that reads ``x`` bilinearly resampled to ``size``: size None
    when the op reads x as it is (no size, or x's own (H, W))."""
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners: expected a bool, got {align_corners!r}")
    if size is None:
        return None, align_corners
    if isinstance(size, torch.Size):
        size = tuple(size)
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    ok = ok and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in size)
    if not ok:
        raise ValueError(f"size: expected None or (H, W), two positive ints, got {size!r}")
    size = (int(size[0]), int(size[1]))
    if size != tuple(x.shape[-2:]) and 0 in x.shape[-2:]:
        raise ValueError(f"size: logits with no pixels (shape {tuple(x.shape)}) cannot be resampled to {size}")
    return (None if size == tuple(x.shape[-2:]) else size), align_corners


def integer(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {v!r}")
    return int(v)


def number(v: object, name: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name}: expected a finite number, got {f}")
    if low is not None and (f < low or (low_open and f == low)):
        raise ValueError(f"{name}: expected {'>' if low_open else '>='} {low}, got {f}")
    if high is not None and f > high:
        raise ValueError(f"{name}: expected <= {high}, got {f}")
    return f


def reduction(r: object) -> int:
    if r not in REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {r!r}")
    return REDUCTIONS[r]  # type: ignore[index]


def normalizer(
    n: object, allowed: Sequence[str], like: torch.Tensor | None = None, tensors: bool = False
) -> tuple[int, float]:
    """(mode code, value) of a mean's denominator: a name from ``allowed``, a finite positive
    number, or with ``tensors`` a 0-dim tensor holding one (on ``like``'s device when given), which
    the kernel reads itself."""
    if isinstance(n, str):
        if n not in allowed:
            raise ValueError(
                f"normalizer: expected one of {', '.join(map(repr, allowed))} or a positive number, got {n!r}"
            )
        return NORMALIZERS[n], 0.0
    if isinstance(n, torch.Tensor) and tensors:
        if n.dim() != 0 or not (n.dtype.is_floating_point or not n.dtype.is_complex):
            raise ValueError(f"normalizer: expected a 0-dim real tensor, got shape {tuple(n.shape)} {n.dtype}")
        if like is not None:
            same_device(like, n, "normalizer", "logits")
        tensor_number(n, "normalizer", low=0.0)  # a count computed on the device may be 0: loss 0
        return Normalizer.TENSOR, 0.0
    return Normalizer.VALUE, number(n, "normalizer", low=0.0, low_open=True)


def tensor_number(
    t: torch.Tensor, name: str, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    """The value of a 0-dim tensor, held to what :func:`number` requires of a number. A plain CPU
    tensor is read (free) and refused at once with number()'s error; elsewhere (CUDA, or traced
    by torch.compile) the check runs on the device, asserting without a host sync."""
    if type(t) is torch.Tensor and t.device.type == "cpu" and not torch.compiler.is_compiling():
        number(t.item(), name, low, high, low_open)
        return
    v = t.detach().double()
    ok = torch.isfinite(v)
    if low is not None:
        ok &= v > low if low_open else v >= low
    if high is not None:
        ok &= v <= high
    bounds = " ".join(filter(None, [f"{'>' if low_open else '>='} {low}" if low is not None else "",
                                     f"<= {high}" if high is not None else ""]))  # fmt: skip
    torch._assert_async(ok, f"{name}: expected a finite number {bounds}".strip())


def target_values(t: torch.Tensor, num_classes: int, ignore_index: int, name: str = "target") -> None:
    """Raises if a target is outside [0, C) and is not ignore_index. Reads the tensor: a host sync on GPUs."""
    bad = t < 0
    if t.dtype.is_floating_point or num_classes <= torch.iinfo(t.dtype).max:  # else C itself would wrap
        bad |= t >= num_classes
    bad &= not_ignored(t, ignore_index)
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise IndexError(
            f"{name}: expected class indices in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got {int(t[tuple(idx)])} at (n={idx[0]}, h={idx[1]}, w={idx[2]})"
        )
