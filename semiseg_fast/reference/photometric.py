"""Monodepth2's photometric reprojection loss, written as its code computes it: SSIM from 3x3 means
over a reflection-padded image, 0.85 SSIM + 0.15 L1 per pixel, the minimum over the warped sources
and (auto-masking) the unwarped ones. The ground truth of ``photometric_loss`` and the baseline of
its benchmark."""

from __future__ import annotations

import torch
import torch.nn.functional as F

C1, C2 = 0.01**2, 0.03**2


def _mean3x3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)


def ssim_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """clamp((1 - SSIM(x, y)) / 2, 0, 1) per pixel and channel, of (N, C, H, W) images."""
    mu_x, mu_y = _mean3x3(x), _mean3x3(y)
    sigma_x = _mean3x3(x * x) - mu_x**2
    sigma_y = _mean3x3(y * y) - mu_y**2
    sigma_xy = _mean3x3(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + C1) * (2 * sigma_xy + C2)
    den = (mu_x**2 + mu_y**2 + C1) * (sigma_x + sigma_y + C2)
    return torch.clamp((1 - num / den) / 2, 0, 1)


def reprojection_error(target: torch.Tensor, image: torch.Tensor, ssim_weight: float = 0.85) -> torch.Tensor:
    """(N, H, W): ``ssim_weight`` mean_c SSIM error + (1 - ``ssim_weight``) mean_c |target - image|."""
    l1 = (target - image).abs().mean(1)
    return ssim_weight * ssim_error(image, target).mean(1) + (1 - ssim_weight) * l1


def photometric_loss(
    target: torch.Tensor,
    warped: torch.Tensor,
    identity: torch.Tensor | None = None,
    ssim_weight: float = 0.85,
    return_winner: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean over N·H·W of each pixel's smallest error among the S ``warped`` sources (S, N, 3, H,
    W) and, given, the S ``identity`` ones (no gradient: only ``warped`` is learned through). A
    warped source wins a tie with another of higher index and with any identity error; a NaN error
    anywhere in a pixel's candidates makes its loss, and every warped source's gradient at that
    pixel, NaN (and, as autograd passes 0 times a NaN derivative, a source's gradient over the 3x3
    window of a pixel where its own error is NaN). In fp32 (fp64 for fp64 input). With
    ``return_winner``, also the (N, H, W) int8 index of the winning warped source, -1 where an
    identity error won."""
    dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
    target, warped = target.to(dtype), warped.to(dtype)
    errors = torch.stack([reprojection_error(target, w, ssim_weight) for w in warped])
    best = errors.min(0).values
    winner = (errors == best).to(torch.int8).argmax(0)  # the first source at the minimum
    best = errors.gather(0, winner[None])[0]  # the gradient goes to that source
    nan = errors.isnan().any(0)
    if identity is not None:
        with torch.no_grad():
            still = torch.stack([reprojection_error(target, i.to(dtype), ssim_weight) for i in identity]).min(0).values
        nan |= still.isnan()
        identity_wins = still < best
        best = torch.where(identity_wins, still, best)
        winner = winner.masked_fill(identity_wins, -1)
    # a NaN pixel: its loss and every warped source's gradient there are NaN (docs/design.md)
    poison = torch.zeros_like(best).masked_fill(nan, float("nan"))
    best = torch.where(nan, best.detach(), best) + warped.sum((0, 2)) * poison
    loss = best.mean()
    return (loss, winner.masked_fill(nan, -1).to(torch.int8)) if return_winner else loss
