"""Monodepth2's self-supervised objective on a clip (t-1, t, t+1): frame t's depth and the two
motions are learned by warping both neighbours into frame t, with the fused photometric loss
(auto-masked by the unwarped neighbours, minimum over sources), at every decoder scale upsampled to
full resolution, plus edge-aware smoothness at each scale's own resolution. And the depth task's
loss: a segmentation model's depth head learning a frozen depth network's log depth."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import normalize
from ..data.transforms import gaussian_blur
from ..models.deeplab import SmallEncoder
from ..ops.photometric import photometric_loss
from .geometry import motion, smoothness, warp
from .networks import DepthNet, PoseNet, disparity_to_depth


def neighbour_motions(pose_net: PoseNet, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(R, T) from frame t's camera to frame t-1's and to t+1's. The pose network sees each pair
    in time order, and the motion into the earlier frame is the inverse of what it predicts."""
    images = normalize(frames.flatten(0, 1)).view(frames.shape)
    out = []
    for earlier, later, invert in ((0, 1, True), (1, 2, False)):
        axis_angle, translation = pose_net(torch.cat([images[:, earlier], images[:, later]], 1))
        out.append(motion(axis_angle, translation, invert))
    return out


def depth_loss(
    depth_net: DepthNet,
    pose_net: PoseNet,
    frames: torch.Tensor,
    intrinsics: torch.Tensor,
    smoothness_weight: float = 1e-3,
    ssim_weight: float = 0.85,
    blur: float = 0.0,
    reference: SmallEncoder | None = None,
    feature_distance: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a batch of clips ``frames`` uint8 (N, 3, 3, H, W) with ``intrinsics`` (N, 3, 3),
    and its photometric and smoothness parts (averaged over scales, detached: no host sync here).
    ``blur`` > 0 compares frames filtered by a Gaussian of that sigma: on noisy frames, bilinear
    sampling between pixels averages the noise away, which rewards depth that warps to fractions
    of a pixel rather than true depth; smoothed noise leaves that less to gain.

    ``feature_distance`` > 0 adds that weight times the distance of the depth encoder's last-stage
    features of frame t from a ``reference`` encoder's (its start, frozen): the mean over the
    feature map of the per-position L2 norm, Hoyer et al.'s feature distance, which keeps the
    depth encoder near what it started from (the dict's ``feature_distance``, 0 without it)."""
    h, w = frames.shape[-2:]
    colour = frames.float() / 255.0
    if blur > 0:
        colour = gaussian_blur(colour.flatten(0, 1), blur).view(colour.shape)
    target, sources = colour[:, 1], torch.stack([colour[:, 0], colour[:, 2]])
    image = normalize(frames[:, 1])
    encoded = depth_net.encode(image)
    disparities = depth_net.disparities(depth_net.decode(encoded, (h, w)))
    motions = neighbour_motions(pose_net, frames)
    loss = photo_total = smooth_total = torch.zeros((), device=frames.device)
    for scale, disparity in enumerate(disparities):
        depth = disparity_to_depth(F.interpolate(disparity, size=(h, w), mode="bilinear", align_corners=False))
        warped = torch.stack([warp(src, depth, R, T, intrinsics) for src, (R, T) in zip(sources, motions)])
        photo = photometric_loss(target, warped, identity=sources, ssim_weight=ssim_weight)
        shown = target if scale == 0 else F.interpolate(target, size=disparity.shape[-2:], mode="area")
        smooth = smoothness(disparity, shown)
        loss = loss + photo + smoothness_weight / 2**scale * smooth
        photo_total = photo_total + photo.detach()
        smooth_total = smooth_total + smooth.detach()
    n = len(disparities)
    loss, distance = loss / n, torch.zeros((), device=frames.device)
    if feature_distance > 0:
        if reference is None:
            raise ValueError("reference: the encoder to measure the feature distance from is needed")
        with torch.no_grad():
            start = reference(image)[2]
        distance = (encoded[2] - start).norm(dim=1).mean()
        loss = loss + feature_distance * distance
    return loss, {"photometric": photo_total / n, "smoothness": smooth_total / n, "feature_distance": distance.detach()}


def depth_task_loss(disparity: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |log depth - the target's log depth| over the ``valid`` (N, H, W) pixels, at the head's
    resolution: ``disparity`` (N, 1, h, w) the head's, ``target`` (N, 1, H, W) a depth network's,
    area-averaged in log space."""
    with torch.no_grad():
        target = disparity_to_depth(target.float()).log()
        target = F.interpolate(target, size=disparity.shape[-2:], mode="area")
        keep = F.interpolate(valid[:, None].float(), size=disparity.shape[-2:], mode="area") > 0.999
    error = (disparity_to_depth(disparity.float()).log() - target).abs()
    return (error * keep).sum() / keep.sum().clamp_min(1)
