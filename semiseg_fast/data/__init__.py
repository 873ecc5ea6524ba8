"""Datasets (the embedded synthetic scenes, VOC / Cityscapes folders) and augmentations."""

from . import synthetic
from .folders import DataError, SegmentationFolder
from .subset import Subset
from .synthetic import SyntheticScenes
from .transforms import denormalize, normalize, strong_augment, weak_augment

__all__ = [
    "DataError",
    "SegmentationFolder",
    "Subset",
    "SyntheticScenes",
    "denormalize",
    "normalize",
    "strong_augment",
    "synthetic",
    "weak_augment",
]
