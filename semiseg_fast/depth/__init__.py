"""Self-supervised monocular depth (Hoyer et al.'s first step, trained Monodepth2's way): the depth
and pose networks, view synthesis, the objective, the scores, and ``python -m semiseg_fast.depth``."""

from .evaluate import depth_errors, median_baseline
from .geometry import axis_angle_to_matrix, motion, smoothness, warp
from .networks import DepthNet, PoseNet, disparity_to_depth
from .objective import depth_loss, neighbour_motions

__all__ = [
    "DepthNet",
    "PoseNet",
    "axis_angle_to_matrix",
    "depth_errors",
    "depth_loss",
    "disparity_to_depth",
    "median_baseline",
    "motion",
    "neighbour_motions",
    "smoothness",
    "warp",
]
