"""Datasets (the embedded synthetic scenes and their clips, VOC / Cityscapes folders and Cityscapes
sequences) and augmentations."""

from . import synthetic
from .clips import SyntheticClips
from .folders import DataError, SegmentationFolder
from .sequences import CityscapesClips
from .subset import Subset
from .synthetic import SyntheticScenes
from .transforms import denormalize, normalize, strong_augment, weak_augment

__all__ = [
    "CityscapesClips",
    "DataError",
    "SegmentationFolder",
    "Subset",
    "SyntheticClips",
    "SyntheticScenes",
    "denormalize",
    "normalize",
    "strong_augment",
    "synthetic",
    "weak_augment",
]
