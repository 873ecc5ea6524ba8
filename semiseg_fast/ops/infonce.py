"""infonce_loss: U2PL's contrastive InfoNCE with the negatives read by row from a key table (the
memory bank) inside the kernel: the (slots, queries, negatives, dim) tensor of gathered negatives
never exists. The gradient with respect to the anchors is computed in the forward pass."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ._grad import first_order_only, refuse_function_transforms, scaled_grad


@torch.library.custom_op("semiseg_fast::infonce_loss", mutates_args=())
def _infonce_op(
    anchors: torch.Tensor,
    positive: torch.Tensor,
    keys: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    temperature: float,
    need_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, d loss / d anchors or an empty tensor); ``positive`` is unit length."""
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_infonce(anchors, positive, keys, rows, weight, temperature, need_grad))
    from ..triton.infonce import infonce

    return infonce(anchors, positive, keys, rows, weight, temperature, need_grad)


@_infonce_op.register_fake
def _(anchors, positive, keys, rows, weight, temperature, need_grad, backend):
    grad = torch.empty_like(anchors) if need_grad else anchors.new_empty((0,))
    return anchors.new_empty(()), grad


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])


def _backward(ctx, g_loss, _g_grad):
    (grad,) = ctx.saved_tensors
    out = scaled_grad(grad, g_loss, grad.dtype) if g_loss is not None and ctx.needs_input_grad[0] else None
    return first_order_only(out), None, None, None, None, None, None, None


_infonce_op.register_autograd(_backward, setup_context=_setup_context)


def infonce_loss(
    anchors: torch.Tensor,
    positive: torch.Tensor,
    keys: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    temperature: float = 0.5,
) -> torch.Tensor:
    """``sum_k weight[k] sum_q CE(logits[k, q] / temperature, 0)`` with ``logits[k, q]`` =
    ``[cos(anchors[k, q], positive[k]), cos(anchors[k, q], keys[rows[k, q, j]]) for j < M]``.

    U2PL's contrastive term for K class slots with Q anchors each and M negatives per anchor, the
    negatives being rows of ``keys`` (the memory bank) read by index inside the kernel. Cosine
    similarity as ``torch.cosine_similarity``: each vector divided by ``max(norm, 1e-8)``.

    Args:
        anchors: (K, Q, D) float32 student features; the only input that gets a gradient.
        positive: (K, D) float32 prototypes (no gradient).
        keys: (R, D) float32 key table (no gradient).
        rows: (K, Q, M) int64 row indices into ``keys``, in [0, R).
        weight: (K,) float32 per-slot weights (U2PL: 1 / (Q * present classes) for active slots);
            a slot of weight 0 contributes nothing and reads no rows.
        temperature: > 0.

    Returns:
        The fp32 loss (0-dim).
    """
    anchors = _checks.tensor(anchors, "anchors")
    if anchors.dim() != 3 or anchors.dtype != torch.float32:
        raise ValueError(f"anchors: expected a (K, Q, D) float32 tensor, got {tuple(anchors.shape)} {anchors.dtype}")
    k, q, d = anchors.shape
    positive = _checks.shaped(positive, "positive", (k, d), torch.float32)
    weight = _checks.shaped(weight, "weight", (k,), torch.float32)
    keys, rows = _checks.tensor(keys, "keys"), _checks.tensor(rows, "rows")
    if keys.dim() != 2 or keys.shape[1] != d or keys.dtype != torch.float32:
        raise ValueError(f"keys: expected an (R, {d}) float32 tensor, got {tuple(keys.shape)} {keys.dtype}")
    if rows.dim() != 3 or tuple(rows.shape[:2]) != (k, q) or rows.dtype != torch.int64:
        raise ValueError(f"rows: expected a ({k}, {q}, M) int64 tensor, got {tuple(rows.shape)} {rows.dtype}")
    for name, t in (("positive", positive), ("keys", keys), ("rows", rows), ("weight", weight)):
        _checks.same_device(anchors, t, name, "anchors")
    temperature = _checks.number(temperature, "temperature", low=0.0, low_open=True)
    impl = resolve(anchors.device)
    refuse_function_transforms(anchors, impl)
    if impl == "reference":
        return reference.infonce_loss(anchors, positive, keys, rows, weight, temperature)
    with torch.no_grad():
        unit = positive / torch.linalg.vector_norm(positive, dim=-1, keepdim=True).clamp_min(1e-8)
    need_grad = torch.is_grad_enabled() and anchors.requires_grad
    loss, _ = _infonce_op(anchors, unit, keys.detach(), rows, weight.detach(), temperature, need_grad, impl)
    return loss
