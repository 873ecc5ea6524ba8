"""ohem_cross_entropy: U2PL's online hard example mining (the Cityscapes supervised loss) without a
sort: the k-th smallest true-class probability by selection, then one fused cross-entropy pass over
the kept pixels."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ..base.resample import interpolate
from ._grad import refuse_function_transforms
from .cross_entropy import pseudo_label_cross_entropy


@torch.library.custom_op("semiseg_fast::select_rank", mutates_args=())
def _select_rank_op(values: torch.Tensor, rank: int, backend: str) -> torch.Tensor:
    """The value (fp32, 0-dim) at 0-based ``rank`` of all ``values`` in ascending order, NaN last."""
    if backend == "cpp":
        return torch.ops.semiseg_fast._cpp_select_rank(values, rank)
    from ..triton.percentile import select_ranks

    return select_ranks(values, None, torch.full((1,), rank, dtype=torch.int64, device=values.device))[0]


@_select_rank_op.register_fake
def _(values, rank, backend):
    return values.new_empty((), dtype=torch.float32)


def check_options(threshold: object, min_kept: object, ignore_index: object) -> tuple[float, int, int]:
    """The one check of the options, for the op and for the module at construction."""
    threshold = _checks.number(threshold, "threshold", low=0.0, high=1.0)
    min_kept = _checks.integer(min_kept, "min_kept")
    if min_kept < 0:
        raise ValueError(f"min_kept: expected >= 0, got {min_kept}")
    return threshold, min_kept, _checks.integer(ignore_index, "ignore_index")


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    threshold: float = 0.7,
    min_kept: int = 100000,
    ignore_index: int = 255,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> torch.Tensor:
    """Cross-entropy over the hard pixels, as U2PL's ``OhemCrossEntropy2dTensor`` (the supervised loss
    of its Cityscapes recipe).

    With p the softmax probability of each valid pixel's true class: if ``min_kept`` is at least the
    number of valid pixels, every valid pixel is kept; otherwise the pixels with
    ``p <= max(threshold, t)`` are, t being the ``min_kept``-th smallest p (``min_kept=0``: the
    threshold alone). The loss is the mean cross-entropy over the kept pixels (0, with a zero
    gradient, when none is kept).

    No sort and no host sync: p comes from one cross-entropy pass, t from an exact selection (a
    histogram, then ``nth_element`` on the CPU; a radix select on CUDA), and the loss and its
    gradient from a second fused pass over the kept pixels.

    Args:
        logits: (N, C, H, W), float16/bfloat16/float32/float64, any strides. Computed in fp32.
        target: (N, H, W) integer class indices; ``ignore_index`` marks pixels that take no part.
        threshold: in [0, 1]; pixels this unsure of their true class are always kept.
        min_kept: at least this many pixels are kept (when there are that many valid ones).
        ignore_index: the target value to ignore.
        size, align_corners: the loss of ``F.interpolate(logits, size, mode="bilinear",
            align_corners=align_corners)``, computed without the upsampled tensor: ``target`` is
            (N, *size), ``min_kept`` counts its pixels, the gradient comes back at the logits' own size.

    Returns:
        The fp32 loss. A NaN in a kept pixel's logits gives a NaN loss; a pixel with NaN p is never
        among the mined ones (NaN sorts last and compares false), so it only counts when all valid
        pixels are kept.
    """
    logits = _checks.logits(logits)
    size, align_corners = _checks.output_size(size, logits, align_corners)
    target = _checks.target(target, logits, size=size)
    threshold, min_kept, ignore_index = check_options(threshold, min_kept, ignore_index)
    impl = resolve(logits.device)
    refuse_function_transforms(logits, impl)
    if impl == "reference":
        if logits.device.type == "cpu" and not torch.compiler.is_compiling():
            _checks.target_values(target, logits.shape[1], ignore_index)
        return reference.ohem_cross_entropy(
            interpolate(logits, size, align_corners), target, threshold, min_kept, ignore_index
        )
    resampled = dict(size=size, align_corners=align_corners)
    num_pixels = target.numel()
    if min_kept >= num_pixels:  # never fewer valid pixels than min_kept: plain cross-entropy
        return pseudo_label_cross_entropy(logits, target, ignore_index=ignore_index, **resampled)
    with torch.no_grad():
        ce = pseudo_label_cross_entropy(
            logits.detach(), target, ignore_index=ignore_index, reduction="none", **resampled
        )
        p = torch.exp(-ce)  # the true class's probability; exactly 1 at ignored pixels (ce 0)
        limit = torch.tensor(threshold, dtype=torch.float32, device=p.device)
        if min_kept > 0:
            # fmax: a NaN t (NaN rows among the min_kept smallest) leaves the threshold alone
            limit = torch.fmax(_select_rank_op(p, min_kept - 1, impl), limit)
        num_valid = (target != ignore_index).sum()
        kept = (p <= limit) | (num_valid <= min_kept)
    # "weighted" with a bool weight: the mean over valid kept pixels (0 when there are none)
    return pseudo_label_cross_entropy(
        logits, target, kept, ignore_index=ignore_index, normalizer="weighted", **resampled
    )
