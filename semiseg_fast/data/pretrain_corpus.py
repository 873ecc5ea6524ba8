"""The pretraining corpus: the embedded world's analogue of ImageNet, for ``python -m
semiseg_fast.pretrain``. Scenes are drawn like the segmentation scenes (same backgrounds,
distractors, poses, colours and lighting) but from their own seeds (PRETRAIN_SEED and up, never
the training or validation sets' 0 and 1), and the task is another: multi-label classification of
which of ten shapes and which of ten textures are visible, shape and texture drawn independently
(the segmentation classes tie each shape to one texture and have no label for the other five)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .synthetic import _low_frequency, _shape, _texture, background, grid, illuminate, paint, pose

PRETRAIN_SEED = 1000  # the segmentation scenes use seeds 0 (training) and 1 (validation)
SHAPES = ("disc", "box", "triangle", "ring", "cross", "diamond", "star", "crescent", "bar", "hexagon")
TEXTURES = ("stripes", "checker", "dots", "smooth", "noise", "diagonal", "grid", "waves", "concentric", "radial")
NUM_LABELS = len(SHAPES) + len(TEXTURES)
MIN_VISIBLE = 0.15  # share of an object's pixels left visible for its labels to count


def _corpus_shape(index: int, u: np.ndarray, v: np.ndarray, r: float, aspect: float) -> np.ndarray:
    if index < 5:  # the segmentation scenes' five shapes
        return _shape(index + 1, u, v, r, aspect)
    name = SHAPES[index]
    if name == "diamond":
        return np.abs(u) / r + np.abs(v) / (r * aspect) < 1.0
    if name == "star":  # five points: the radius swings with the angle
        return np.hypot(u, v) < r * (0.6 + 0.4 * np.cos(5 * np.arctan2(v, u)))
    if name == "crescent":
        return (np.hypot(u, v) < r) & (np.hypot(u - 0.45 * r, v) > r * 0.8)
    if name == "bar":
        return (np.abs(u) < r) & (np.abs(v) < r * 0.25 * aspect)
    a = np.abs(u) * 0.5 + np.abs(v) * 0.866  # hexagon: inside three pairs of parallel edges
    return (np.abs(v) < r * 0.8) & (a < r * 0.8) & (np.abs(u) * 0.5 - np.abs(v) * 0.866 < r * 0.8)


def _corpus_texture(index: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    if index < 5:
        return _texture(TEXTURES[index], rng, u, v, r)
    name = TEXTURES[index]
    period = max(4.0, r * rng.uniform(0.4, 0.6))
    if name == "diagonal":
        return (np.sin(2 * np.pi * (u + v) / (period * 1.41)) > 0).astype(np.float64)
    if name == "grid":
        return ((np.abs(np.sin(np.pi * u / period)) < 0.3) | (np.abs(np.sin(np.pi * v / period)) < 0.3)).astype(
            np.float64
        )
    if name == "waves":
        return (np.sin(2 * np.pi * u / period + 2 * np.sin(2 * np.pi * v / period)) > 0).astype(np.float64)
    if name == "concentric":
        return (np.sin(2 * np.pi * np.hypot(u, v) / period) > 0).astype(np.float64)
    return np.clip(np.hypot(u, v) / r + 0.2 * _low_frequency(rng, u / r, v / r), 0.0, 1.0)  # radial


def render_pretrain_scene(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), labels float32 (NUM_LABELS,)): 1 for each shape, then each texture,
    of which an object shows at least MIN_VISIBLE of itself after occlusion."""
    rng = np.random.default_rng([seed, index])
    y, x, side = grid(size)
    image = background(rng, y, x, side)
    owner = np.full(size, -1)
    drawn = []
    for i in range(int(rng.integers(1, 5))):
        shape, texture = int(rng.integers(len(SHAPES))), int(rng.integers(len(TEXTURES)))
        u, v, r = pose(rng, y, x, side)
        mask = _corpus_shape(shape, u, v, r, rng.uniform(0.6, 1.0))
        image = paint(rng, image, mask, _corpus_texture(texture, rng, u, v, r))
        owner[mask] = i
        drawn.append((shape, texture, int(mask.sum())))
    labels = np.zeros(NUM_LABELS, dtype=np.float32)
    visible = np.bincount(owner[owner >= 0], minlength=len(drawn))
    for i, (shape, texture, area) in enumerate(drawn):
        if area and visible[i] >= MIN_VISIBLE * area:
            labels[shape] = labels[len(SHAPES) + texture] = 1.0
    return illuminate(rng, image, y, x, side), labels


class PretrainCorpus(Dataset):
    """``num_images`` pretraining scenes of ``image_size``, rendered at construction into one uint8
    tensor (12 KB per 64x64 scene): item i is (image uint8 (3, H, W), labels float32 (NUM_LABELS,))."""

    def __init__(self, num_images: int, image_size: int = 64, seed: int = PRETRAIN_SEED):
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images: expected a positive integer, got {num_images!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size: expected an integer >= 16, got {image_size!r}")
        scenes = [render_pretrain_scene(seed, i, (image_size, image_size)) for i in range(num_images)]
        self.images = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.stack([s[1] for s in scenes]))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]
