"""Clips of the embedded scenes: frames t-1, t, t+1 from a camera moving through a 3D version of
each scene, with frame t's true depth (for evaluation only).

The scene's layers become planes in frame t's camera. The background is one tilted plane, a ground
plane rising towards the horizon: its depth grows from ``near`` at the bottom row to 2-3x that at
the top. Each object is a fronto-parallel plane nearer than the background, and an object painted
later is nearer than one painted before, so depth agrees with the scenes' occlusion order.

The camera is a pinhole with its focal length equal to the shorter image side and its principal
point at the image centre; pixel (i, j) is centred at (j + 0.5, i + 0.5). It moves at constant
velocity, forward with a little sideways drift and rotation: a point P of frame t's camera is at
R P + T in frame t+1's camera and at R^T (P - T) in frame t-1's.

A frame is rendered by casting each pixel's ray onto every layer's plane and sampling the layer
where the ray meets it. Layers are analytic, so a disoccluded pixel shows what is really behind and
the frames have no holes. Frame t is the segmentation data set's image, bit for bit, so labels and
the pretrained encoder stay valid. The light gradient belongs to the camera.

The fine grain of frame t belongs to the surfaces: each layer carries it where frame t shows that
layer, and grain of the same strength elsewhere (beyond the borders too), and a neighbouring frame
samples it bilinearly where its rays meet the layer. Grain drawn anew for every frame would be
independent of the geometry: on the scenes' smooth backgrounds it would leave the ground's depth
nearly invisible to photometric consistency."""

from __future__ import annotations

import numpy as np
import torch

from .synthetic import LayerGrid, SceneSet, ViewGrain, render_layers

GEOMETRY_STREAM = 1  # the draws of depths and motion use their own stream: the scene's are untouched
GRAIN_STREAM = 2  # the grain of the layers where frame t does not show them
GRAIN_MARGIN = 16  # pixels of grain around frame t's borders; farther out a layer's edge grain repeats
NEAR_RANGE = (8.0, 12.0)  # depth of the ground plane at the bottom row
FAR_FACTOR = (2.0, 3.0)  # its depth at the top row, relative to the bottom
OBJECT_DEPTH = (2.0, 6.0)
FORWARD = (0.2, 0.6)  # per frame, in the depth unit
SIDEWAYS = 0.3
VERTICAL = 0.03
ROTATION_DEG = (1.0, 1.0, 0.5)  # pitch, yaw, roll


def intrinsics(size: tuple[int, int]) -> np.ndarray:
    """(3, 3) float64 camera matrix of a clip of ``size`` (H, W), in pixels."""
    h, w = size
    f = float(min(h, w))
    return np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


def _rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class ClipGeometry:
    """Planes of one scene's layers and the camera's motion, drawn from (seed, index)."""

    def __init__(self, seed: int, index: int, size: tuple[int, int]):
        rng = np.random.default_rng([seed, index, GEOMETRY_STREAM])
        self.size, self.K = size, intrinsics(size)
        angles = np.deg2rad([rng.uniform(-a, a) for a in ROTATION_DEG])
        self.R = _rotation(*angles)
        self.T = np.array([rng.uniform(-SIDEWAYS, SIDEWAYS), rng.uniform(-VERTICAL, VERTICAL), -rng.uniform(*FORWARD)])
        near = rng.uniform(*NEAR_RANGE)
        far = near * rng.uniform(*FAR_FACTOR)
        # The ground plane is n . P = 1 with n = (0, b, a): its inverse depth a + b * y_n is affine
        # in the normalised image row y_n, from 1/far at the top pixel row to 1/near at the bottom.
        h, f, cy = size[0], self.K[1, 1], self.K[1, 2]
        top, bottom = (0.5 - cy) / f, (h - 0.5 - cy) / f
        b = (1 / near - 1 / far) / (bottom - top)
        self.ground = np.array([0.0, b, 1 / far - b * top])
        self.object_depths = np.sort(rng.uniform(*OBJECT_DEPTH, size=4))[::-1]  # the k-th painted is nearer

    def plane(self, layer: int) -> np.ndarray:
        """Normal n of layer ``layer``'s plane n . P = 1 in frame t's camera."""
        if layer == 0:
            return self.ground
        return np.array([0.0, 0.0, 1.0 / self.object_depths[layer - 1]])

    def motion(self, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, T) taking frame t's camera coordinates to frame t+offset's, offset in {-1, 1}."""
        if offset == 1:
            return self.R, self.T
        return self.R.T, -self.R.T @ self.T

    def layer_grid(self, offset: int) -> LayerGrid:
        """The ``layer_grid`` of :func:`render_layers` for frame t+offset: where each pixel's ray
        meets each layer's plane, in frame t's image coordinates (units of the shorter side)."""
        R, T = self.motion(offset)
        h, w = self.size
        f, cx, cy = self.K[0, 0], self.K[0, 2], self.K[1, 2]
        ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        rays = np.stack([(xs - cx) / f, (ys - cy) / f, np.ones_like(xs)], axis=-1)  # in frame t+offset
        side = float(min(h, w))

        def sample(layer: int, count: int) -> tuple[np.ndarray, np.ndarray]:
            n = self.plane(layer)
            # A ray point s * ray is R^T (s * ray - T) in frame t; on the plane when n . that = 1.
            s = (1 + n @ (R.T @ T)) / (rays @ (R @ n))
            points = (s[..., None] * rays - T) @ R
            return (f * points[..., 1] / points[..., 2] + cy) / side, (f * points[..., 0] / points[..., 2] + cx) / side

        return sample

    def depth(self, top_layer: np.ndarray) -> np.ndarray:
        """(H, W) float32 depth of frame t, given which layer is on top at each pixel."""
        h = self.size[0]
        rows = (np.arange(h) + 0.5 - self.K[1, 2]) / self.K[1, 1]
        ground = np.broadcast_to((1.0 / (self.ground[2] + self.ground[1] * rows))[:, None], top_layer.shape)
        objects = np.concatenate([[0.0], self.object_depths])[top_layer]
        return np.where(top_layer == 0, ground, objects).astype(np.float32)


def _bilinear(field: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``field`` (H, W, C) at fractional pixel positions (rows, cols), clamped to its extent."""
    h, w = field.shape[:2]
    rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r0, c0 = np.minimum(rows.astype(np.int64), h - 2), np.minimum(cols.astype(np.int64), w - 2)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    top = field[r0, c0] * (1 - fc) + field[r0, c0 + 1] * fc
    bottom = field[r0 + 1, c0] * (1 - fc) + field[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def surface_grain(seed: int, index: int, frame_top: np.ndarray, layer_grid: LayerGrid) -> ViewGrain:
    """The ``grain`` of :func:`render_layers` for the view ``layer_grid``: each layer's grain
    sampled where the view's rays meet it. A layer's grain is frame t's where frame t shows it
    (``frame_top``), and a draw of the same sigma elsewhere, the same for every view."""
    h, w = frame_top.shape
    side, m = float(min(h, w)), GRAIN_MARGIN

    def grain(noise: np.ndarray, sigma: float, top: np.ndarray) -> np.ndarray:
        out = np.zeros_like(noise)
        for layer in np.unique(top):
            rng = np.random.default_rng([seed, index, GRAIN_STREAM, int(layer)])
            field = rng.normal(0, sigma, size=(h + 2 * m, w + 2 * m, noise.shape[2]))
            shown = frame_top == layer
            field[m : m + h, m : m + w][shown] = noise[shown]
            y, x = layer_grid(int(layer), 0)
            here = top == layer
            rows, cols = (np.broadcast_to(c * side - 0.5 + m, here.shape)[here] for c in (y, x))
            out[here] = _bilinear(field, rows, cols)
        return out

    return grain


def render_clip(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (3, H, W, 3) for t-1, t, t+1; depth float32 (H, W) of frame t) of scene
    ``index`` of dataset ``seed``."""
    geometry = ClipGeometry(seed, index, size)
    current, _, top = render_layers(seed, index, size)

    def neighbour(offset: int) -> np.ndarray:
        layer_grid = geometry.layer_grid(offset)
        return render_layers(seed, index, size, layer_grid, surface_grain(seed, index, top, layer_grid))[0]

    return np.stack([neighbour(-1), current, neighbour(1)]), geometry.depth(top)


def true_disparity(seed: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 inverse depth of scene ``index`` of dataset ``seed``: its clip's frame t."""
    top = render_layers(seed, index, size)[2]
    return (1.0 / ClipGeometry(seed, index, size).depth(top)).astype(np.float32)


class SyntheticClips(SceneSet):
    """The clips of :class:`SyntheticScenes` ``(num_images, image_size, seed)``: item i is a dict
    of ``frames`` uint8 (3, 3, H, W) (t-1, t, t+1; frame t is that data set's image i),
    ``depth`` float32 (H, W) (frame t's true depth, for evaluation) and ``intrinsics`` float32
    (3, 3). Rendered clips are kept in memory with ``cache=True`` (53 KB per 64x64 clip)."""

    def __init__(self, num_images: int, image_size: tuple[int, int] = (64, 64), seed: int = 0, cache: bool = True):
        super().__init__(num_images, image_size, seed, cache)
        self.intrinsics = torch.from_numpy(intrinsics(self.image_size)).float()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._position(index)
        item = None if self._cache is None else self._cache.get(index)
        if item is None:
            frames, depth = render_clip(self.seed, index, self.image_size)
            item = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(depth)
            if self._cache is not None:
                self._cache[index] = item
        return {"frames": item[0].clone(), "depth": item[1].clone(), "intrinsics": self.intrinsics.clone()}
