"""Segmentation models for the training loop, and the hook for a user's own model."""

from .build import build_model, model_outputs
from .deeplab import DeepLabV3Plus
from .pseudoseg import PseudoSegHeads, SelfAttentionGradCAM, grad_cam, image_labels_from_masks

__all__ = [
    "DeepLabV3Plus",
    "PseudoSegHeads",
    "SelfAttentionGradCAM",
    "build_model",
    "grad_cam",
    "image_labels_from_masks",
    "model_outputs",
]
