"""Rigid motion and view synthesis: where a target pixel at a depth lands in a source frame, and
the source sampled there. Pixel (i, j) is centred at (j + 0.5, i + 0.5), as in
:mod:`semiseg_fast.data.clips` and ``grid_sample(align_corners=False)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(N, 3) axis times angle -> (N, 3, 3) rotations (Rodrigues' formula)."""
    angle = axis_angle.norm(dim=1, keepdim=True).clamp_min(1e-7)
    x, y, z = (axis_angle / angle).unbind(1)
    c, s = torch.cos(angle[:, 0]), torch.sin(angle[:, 0])
    t = 1 - c
    rows = [
        t * x * x + c, t * x * y - s * z, t * x * z + s * y,
        t * x * y + s * z, t * y * y + c, t * y * z - s * x,
        t * x * z - s * y, t * y * z + s * x, t * z * z + c,
    ]  # fmt: skip
    return torch.stack(rows, 1).view(-1, 3, 3)


def motion(axis_angle: torch.Tensor, translation: torch.Tensor, invert: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(R (N, 3, 3), T (N, 3)) with P' = R P + T; ``invert`` gives the opposite motion."""
    R = axis_angle_to_matrix(axis_angle)
    if not invert:
        return R, translation
    Rt = R.transpose(1, 2)
    return Rt, -(Rt @ translation.unsqueeze(2)).squeeze(2)


def warp(source: torch.Tensor, depth: torch.Tensor, R: torch.Tensor, T: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``source`` (N, C, H, W) seen from the target view: each target pixel at ``depth`` (N, 1, H, W)
    is moved by (R, T) into the source camera, projected with ``K`` (N, 3, 3) and the source is
    sampled there (bilinear, border values outside)."""
    n, _, h, w = depth.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=depth.device, dtype=depth.dtype) + 0.5,
        torch.arange(w, device=depth.device, dtype=depth.dtype) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([xs, ys, torch.ones_like(xs)]).view(1, 3, -1)  # (1, 3, HW)
    rays = torch.linalg.inv(K) @ pixels  # (N, 3, HW)
    points = R @ (rays * depth.view(n, 1, -1)) + T.unsqueeze(2)
    projected = K @ points
    uv = projected[:, :2] / projected[:, 2:].clamp_min(1e-6)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=depth.device, dtype=depth.dtype).view(1, 2, 1)
    grid = (uv * scale - 1).transpose(1, 2).reshape(n, h, w, 2)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)


def smoothness(disparity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Monodepth2's edge-aware smoothness of a mean-normalised disparity (N, 1, h, w) against the
    image (N, 3, h, w): first differences weighted by exp(-|image differences|)."""
    d = disparity / disparity.mean(dim=(2, 3), keepdim=True).clamp_min(1e-7)
    dx, dy = (d[..., :, 1:] - d[..., :, :-1]).abs(), (d[..., 1:, :] - d[..., :-1, :]).abs()
    ix = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()
