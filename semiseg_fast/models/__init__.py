"""Segmentation models for the training loop, and the hook for a user's own model."""
from .build import build_model, model_outputs
from .deeplab import DeepLabV3Plus

__all__ = ["DeepLabV3Plus", "build_model", "model_outputs"]
