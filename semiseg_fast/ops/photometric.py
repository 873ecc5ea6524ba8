"""photometric_loss: Monodepth2's photometric reprojection loss with the minimum over sources and
auto-masking, the 3x3 SSIM stencil, the minimum and the gradient in one pass."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve
from ._grad import first_order_only, refuse_function_transforms, scaled_grad


@torch.library.custom_op("semiseg_fast::photometric_loss", mutates_args=())
def _photometric_op(
    target: torch.Tensor,
    warped: torch.Tensor,
    identity: torch.Tensor | None,
    ssim_weight: float,
    need_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, winner (N, H, W) int8, d loss / d warped in fp32 (empty when not wanted))."""
    if backend == "cpp":
        return tuple(torch.ops.semiseg_fast._cpp_photometric(target, warped, identity, ssim_weight, need_grad))
    from ..triton.photometric import photometric

    return photometric(target, warped, identity, ssim_weight, need_grad)


@_photometric_op.register_fake
def _(target, warped, identity, ssim_weight, need_grad, backend):
    n, _, h, w = target.shape
    grad = warped.new_empty(warped.shape if need_grad else (0,), dtype=torch.float32)
    return target.new_empty((), dtype=torch.float32), target.new_empty((n, h, w), dtype=torch.int8), grad


def _setup_context(ctx, inputs, output):
    _, winner, grad = output
    ctx.mark_non_differentiable(winner, grad)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad)
    ctx.dtype = inputs[1].dtype


def _backward(ctx, g_loss, *_):
    (grad,) = ctx.saved_tensors
    g_warped = None
    if ctx.needs_input_grad[1] and g_loss is not None:
        g_warped = first_order_only(scaled_grad(grad, g_loss.float(), ctx.dtype))
    return None, g_warped, None, None, None, None


_photometric_op.register_autograd(_backward, setup_context=_setup_context)


def _images(x: object, name: str, dims: int) -> torch.Tensor:
    x = _checks.tensor(x, name)
    shape = "(S, N, 3, H, W)" if dims == 5 else "(N, 3, H, W)"
    if x.dim() != dims or x.shape[-3] != 3:
        raise ValueError(f"{name}: expected a {dims}-D tensor {shape} of RGB images, got shape {tuple(x.shape)}")
    if x.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}")
    return x


def photometric_loss(
    target: torch.Tensor,
    warped: torch.Tensor,
    identity: torch.Tensor | None = None,
    ssim_weight: float = 0.85,
    return_winner: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Monodepth2's photometric loss of a target frame against S source frames warped into its view.

    Per pixel and source the error is ``ssim_weight * mean_c clamp((1 - SSIM) / 2, 0, 1) +
    (1 - ssim_weight) * mean_c |target - warped|``, SSIM from 3x3 means over the reflection-padded
    images (C1 = 0.01², C2 = 0.03²); a pixel's loss is its smallest error over the warped sources
    and, with ``identity``, the unwarped ones too (auto-masking: pixels that do not move between
    frames are not learned from). Returns the mean over N·H·W as a 0-dim fp32 tensor.

    Args:
        target: (N, 3, H, W), H and W at least 2.
        warped: (S, N, 3, H, W), the S sources warped into the target view; the only input that
            gets a gradient (of the winning source at each pixel). A warped source wins a tie with
            one of higher index.
        identity: (S, N, 3, H, W), the unwarped sources, or None. An identity error wins only when
            strictly smaller than every warped one.
        ssim_weight: in [0, 1].
        return_winner: also return the (N, H, W) int8 index of each pixel's winning warped source,
            -1 where an identity error won (or the pixel's loss is NaN).

    A NaN in any candidate error of a pixel makes the loss NaN. Float16/bfloat16/float32/float64,
    any strides; computed in fp32.
    """
    target = _images(target, "target", 4)
    warped = _images(warped, "warped", 5)
    if tuple(warped.shape[1:]) != tuple(target.shape):
        raise ValueError(
            f"warped: expected (S, N, 3, H, W) with target's (N, 3, H, W) = {tuple(target.shape)}, "
            f"got {tuple(warped.shape)}"
        )
    if target.shape[-2] < 2 or target.shape[-1] < 2:
        raise ValueError(
            f"target: expected images of at least 2 x 2 pixels (SSIM's 3x3 window), got {tuple(target.shape)}"
        )
    _checks.same_device(warped, target, "warped", "target")
    if identity is not None:
        identity = _images(identity, "identity", 5)
        if identity.shape != warped.shape:
            raise ValueError(f"identity: expected warped's shape {tuple(warped.shape)}, got {tuple(identity.shape)}")
        _checks.same_device(identity, target, "identity", "target")
    ssim_weight = _checks.number(ssim_weight, "ssim_weight", low=0.0, high=1.0)
    impl = resolve(target.device)
    refuse_function_transforms(warped, impl)
    if impl == "reference":
        return reference.photometric.photometric_loss(target, warped, identity, ssim_weight, return_winner)
    need_grad = torch.is_grad_enabled() and warped.requires_grad
    identity = None if identity is None else identity.detach()
    loss, winner, _ = _photometric_op(target.detach(), warped, identity, ssim_weight, need_grad, impl)
    return (loss, winner) if return_winner else loss
