"""An embedded segmentation dataset, generated procedurally and deterministically from
(seed, index): no files, no downloads.

Five object classes over a structured background. A class is a shape with its own surface
texture (stripes, checkers, dots, a smooth ramp, blotches), two cues at different scales;
colour is random per instance and never tells the class. One to four objects per image vary in
size (20-60% of the side), aspect and rotation and may overlap (later objects occlude earlier
ones); a random illumination gradient, brightness, contrast and noise are applied on top. The
background mixes smooth gradients, low-frequency blobs and, in 60% of images, a patch of
object-like texture as a distractor, so that a few labeled images do not cover the variation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES = ("background", "disc", "box", "triangle", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)
DISTRACTOR_P = 0.6  # how often the background holds a patch of object-like texture
TEXTURES = ("stripes", "checker", "dots", "smooth", "noise")  # the texture of classes 1..5


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in [0, 1] from a random hue, saturation and value."""
    h, s, v = rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _low_frequency(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, waves: int = 3) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a sum of a few random plane waves."""
    out = np.zeros(np.broadcast_shapes(y.shape, x.shape))
    for _ in range(waves):
        angle, freq, phase = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)
        out += np.sin(2 * np.pi * freq * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return out / waves


def _texture(kind: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Mix factor in [0, 1] between an object's two colours, in the object's own coordinates."""
    period = max(4.0, scale * rng.uniform(0.4, 0.6))
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float64)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == "dots":
        fu, fv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float64)
    if kind == "smooth":
        return np.clip(0.5 + u / (2 * scale), 0.0, 1.0)
    return (_low_frequency(rng, v / period, u / period, waves=4) > 0).astype(np.float64) * 0.8


def _shape(cls: int, u: np.ndarray, v: np.ndarray, r: float, aspect: float) -> np.ndarray:
    """Boolean mask of class ``cls``'s shape of radius ``r`` in rotated coordinates (u, v)."""
    if cls == 1:  # disc (an ellipse)
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 < 1.0
    if cls == 2:  # box
        return (np.abs(u) < r * 0.85) & (np.abs(v) < r * 0.85 * aspect)
    if cls == 3:  # triangle: inside all three edges of an equilateral triangle
        inside = np.ones(u.shape, dtype=bool)
        for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
            inside &= np.cos(angle) * u + np.sin(angle) * v < r * 0.55
        return inside
    if cls == 4:  # ring
        d = np.sqrt(u * u + (v / aspect) ** 2)
        return (d < r) & (d > r * 0.55)
    arm = r * 0.33  # cross
    return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))


def grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel-centre coordinates (y (H, 1), x (1, W)) in units of the shorter side, and that side."""
    h, w = size
    side = float(min(h, w))
    return (np.arange(h)[:, None] + 0.5) / side, (np.arange(w)[None, :] + 0.5) / side, side


def background(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, side: float) -> np.ndarray:
    """(H, W, 3) in about [0, 1]: a two-colour gradient, low-frequency blobs, and in DISTRACTOR_P
    of images a patch of object-like texture."""
    h, w = y.shape[0], x.shape[1]
    c1, c2 = _random_colour(rng), _random_colour(rng)
    t = np.clip(0.5 + 0.5 * _low_frequency(rng, y, x, waves=2), 0, 1)[..., None]
    image = c1 * (1 - t) + c2 * t
    image = image * (1 + 0.15 * _low_frequency(rng, y * 3, x * 3)[..., None])
    if rng.random() < DISTRACTOR_P:
        y0, x0 = rng.uniform(0, 0.6, size=2)
        patch = (y >= y0) & (y < y0 + rng.uniform(0.2, 0.4)) & (x >= x0) & (x < x0 + rng.uniform(0.2, 0.4))
        u = np.broadcast_to(x, (h, w)) * side
        tex = _texture(TEXTURES[rng.integers(len(TEXTURES))], rng, u, np.broadcast_to(y, (h, w)) * side, side * 0.3)
        alpha = rng.uniform(0.25, 0.5)
        image = np.where(patch[..., None], image * (1 - alpha * tex[..., None]) + alpha * tex[..., None] * c2, image)
    return image


def pose(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(u, v, r): an object's rotated coordinates around a random centre, and its random radius."""
    h, w = y.shape[0], x.shape[1]
    r = rng.uniform(0.1, 0.3) * side
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = y * side - cy, x * side - cx
    return np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy, r


def paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """``image`` with the object ``mask`` filled by a random colour pair mixed by ``tex``."""
    tex = tex[..., None]
    a = _random_colour(rng)
    b = a * rng.uniform(0.25, 0.6) if rng.random() < 0.5 else _random_colour(rng)
    return np.where(mask[..., None], a * (1 - tex) + b * tex, image)


def illuminate(
    rng: np.random.Generator,
    image: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    side: float,
    grain: Callable[[np.ndarray, float], np.ndarray] | None = None,
) -> np.ndarray:
    """uint8 (H, W, 3): a random linear light gradient, brightness and contrast, and fine grain:
    Gaussian noise of a random sigma, or what ``grain(noise, sigma)`` makes of that draw (another
    view of the same grain, see :mod:`.clips`)."""
    h, w = y.shape[0], x.shape[1]
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * (x - x.mean()) + np.sin(angle) * (y - y.mean())) * side / max(h, w)  # in [-0.71, 0.71]
    light = 1 + rng.uniform(0.1, 0.4) * along * np.sqrt(2)
    image = image * light[..., None]
    image = (image - 0.5) * rng.uniform(0.7, 1.2) + 0.5 + rng.uniform(-0.12, 0.12)
    sigma = rng.uniform(0.01, 0.05)
    noise = rng.normal(0, sigma, size=image.shape)
    image = image + (noise if grain is None else grain(noise, sigma))
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# Where each layer of a scene is sampled: (layer, number of objects) -> (y, x) grids in units of
# the shorter side. Layer 0 is the background (sampled before the objects are counted, so with a
# count of 0), layer k the k-th object painted.
LayerGrid = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
# The grain a view gets: (the scene's own grain draw, its sigma, the view's top layer) -> grain.
ViewGrain = Callable[[np.ndarray, float, np.ndarray], np.ndarray]


def render_layers(
    seed: int,
    index: int,
    size: tuple[int, int],
    layer_grid: LayerGrid | None = None,
    grain: ViewGrain | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), label uint8 (H, W), top layer uint8 (H, W)) of scene ``index`` of
    dataset ``seed``. ``layer_grid`` samples each layer at other coordinates and ``grain`` gives
    that view its grain (another camera's view of the scene, see :mod:`.clips`); by default every
    layer is seen at the image's own grid. The random draws never depend on the coordinates, so
    every view shows the same scene."""
    rng = np.random.default_rng([seed, index])
    y, x, side = grid(size)
    count = 0

    def sample(layer: int) -> tuple[np.ndarray, np.ndarray]:
        return (y, x) if layer_grid is None else layer_grid(layer, count)

    image = background(rng, *sample(0), side)
    label = np.zeros(size, dtype=np.uint8)
    top = np.zeros(size, dtype=np.uint8)
    count = int(rng.integers(1, 5))
    for layer in range(1, count + 1):
        cls = int(rng.integers(1, NUM_CLASSES))
        u, v, r = pose(rng, *sample(layer), side)
        mask = _shape(cls, u, v, r, rng.uniform(0.6, 1.0))
        image = paint(rng, image, mask, _texture(TEXTURES[cls - 1], rng, u, v, r))
        label[mask], top[mask] = cls, layer
    view_grain = None if grain is None else (lambda noise, sigma: grain(noise, sigma, top))
    return illuminate(rng, image, y, x, side, view_grain), label, top


def render_scene(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), label uint8 (H, W)) of scene ``index`` of dataset ``seed``."""
    image, label, _ = render_layers(seed, index, size)
    return image, label


class SceneSet(Dataset):
    """What the data sets rendered from (seed, index) share: their arguments, checked, their length,
    an index checked and wrapped, and an in-memory cache of rendered items (``cache=True``)."""

    def __init__(self, num_images: int, image_size: tuple[int, int], seed: int, cache: bool):
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images: expected a positive integer, got {num_images!r}")
        h, w = image_size
        if min(h, w) < 8:
            raise ValueError(f"image_size: expected at least 8x8, got {image_size!r}")
        self.num_images, self.image_size, self.seed = num_images, (int(h), int(w)), int(seed)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def _position(self, index: int) -> int:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index: expected < {self.num_images}, got {index}")
        return index % self.num_images


class SyntheticScenes(SceneSet):
    """``num_images`` scenes of ``image_size`` (H, W); item i is (image uint8 (3, H, W), label
    uint8 (H, W)) and depends only on (seed, i), whatever the order or process it is read in.
    Rendered scenes are kept in memory (``cache=True``; 37 KB per 96x96 scene), since training
    reads each one once per epoch."""

    def __init__(self, num_images: int, image_size: tuple[int, int] = (96, 96), seed: int = 0, cache: bool = True):
        super().__init__(num_images, image_size, seed, cache)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._position(index)
        if self._cache is not None and index in self._cache:
            image, label = self._cache[index]
            return image.clone(), label.clone()
        image, label = render_scene(self.seed, index, self.image_size)
        item = torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)
        if self._cache is not None:
            self._cache[index] = item
            return item[0].clone(), item[1].clone()
        return item
