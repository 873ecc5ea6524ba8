"""Cityscapes clips from the sequence layout (``leftImg8bit_sequence/``), as U2PL / UniMatch users
have it, with depth from the ``disparity/`` maps where they exist.

A split line names frame t, under ``leftImg8bit/`` or ``leftImg8bit_sequence/``
(``<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``; a second path on the line, the label,
is ignored). Its clip is frames t - step, t, t + step of ``leftImg8bit_sequence/``; the
intrinsics come from ``camera/<split>/<city>/<city>_<seq>_<frame>_camera.json``. Depth is
baseline * fx / disparity with disparity = (p - 1) / 256 for the 16-bit value p of
``disparity/.../<city>_<seq>_<frame>_disparity.png``; p = 0 (no measurement) and p = 1 (infinitely
far) read 0, "unknown"."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .folders import DataError, read_split

_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


def _parse(line: str) -> tuple[str, str, str, int]:
    """(split, city, sequence, frame) of a split line's first path."""
    path = line.split()[0].lstrip("/")
    parts = path.split("/")
    match = _NAME.match(parts[-1])
    if len(parts) < 4 or parts[-4] not in ("leftImg8bit", "leftImg8bit_sequence") or not match:
        raise ValueError(
            f"split line {line!r}: expected leftImg8bit[_sequence]/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png"
        )
    return parts[-3], match["city"], match["seq"], int(match["frame"])


class CityscapesClips(Dataset):
    """Item i is a dict of ``frames`` uint8 (3, 3, H, W) (t - step, t, t + step), ``depth``
    float32 (H, W) (0 where unknown, and everywhere without ``disparity/``) and ``intrinsics``
    float32 (3, 3) in pixels of the returned frames. ``size`` (H, W) resizes frames (bilinear),
    depth (nearest) and intrinsics; None keeps 2048x1024. Every listed file is checked when the
    data set is built, so a missing one is reported at once with its path."""

    def __init__(self, root: str, split_file: str, size: tuple[int, int] | None = None, step: int = 1):
        if not os.path.isdir(os.path.join(root, "leftImg8bit_sequence")):
            raise FileNotFoundError(f"root: {root!r} has no leftImg8bit_sequence folder")
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"step: expected a positive integer, got {step!r}")
        if size is not None and (len(size) != 2 or min(size) < 8):
            raise ValueError(f"size: expected (H, W) of at least 8x8 or None, got {size!r}")
        self.root, self.size = root, None if size is None else (int(size[0]), int(size[1]))
        self.has_depth = os.path.isdir(os.path.join(root, "disparity"))
        self.items = []
        for line in read_split(root, split_file):
            split, city, seq, frame = _parse(line)
            folder = os.path.join(root, "leftImg8bit_sequence", split, city)
            frames = [os.path.join(folder, f"{city}_{seq}_{frame + d:06d}_leftImg8bit.png") for d in (-step, 0, step)]
            stem = f"{city}_{seq}_{frame:06d}"
            camera = os.path.join(root, "camera", split, city, stem + "_camera.json")
            disparity = os.path.join(root, "disparity", split, city, stem + "_disparity.png")
            for path in frames + [camera] + ([disparity] if self.has_depth else []):
                if not os.path.isfile(path):
                    clip = line.split()[0]
                    raise FileNotFoundError(f"{path!r} (the clip of {clip!r} in {split_file!r}) does not exist")
            self.items.append((frames, camera, disparity))

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _camera(path: str) -> tuple[np.ndarray, float]:
        try:
            with open(path) as f:
                data = json.load(f)
            k = data["intrinsic"]
            return np.array([[k["fx"], 0, k["u0"]], [0, k["fy"], k["v0"]], [0, 0, 1]], dtype=np.float64), float(
                data["extrinsic"]["baseline"]
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"cannot read the camera file {path!r}: {e}") from e

    def _image(self, path: str) -> tuple[np.ndarray, tuple[int, int]]:
        """The frame, resized to ``size``, and its size (H, W) in the file."""
        try:
            with Image.open(path) as im:
                full = (im.height, im.width)
                im = im.convert("RGB")
                if self.size is not None:
                    im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                return np.array(im, dtype=np.uint8), full
        except Exception as e:
            raise DataError(f"cannot read {path!r}: {e}") from e

    def _depth(self, path: str, fx: float, baseline: float, shape: tuple[int, int]) -> np.ndarray:
        try:
            with Image.open(path) as im:
                raw = np.array(im).astype(np.float64)
        except Exception as e:
            raise DataError(f"cannot read {path!r}: {e}") from e
        if raw.ndim != 2:
            raise DataError(f"disparity {path!r}: expected a single-channel 16-bit PNG, got shape {raw.shape}")
        disparity = (raw - 1.0) / 256.0
        depth = np.where(raw > 1, baseline * fx / np.maximum(disparity, 1e-12), 0.0).astype(np.float32)
        if depth.shape != shape:  # nearest: depth is never blended across an edge
            rows = (np.arange(shape[0]) * depth.shape[0] // shape[0])[:, None]
            cols = (np.arange(shape[1]) * depth.shape[1] // shape[1])[None, :]
            depth = depth[rows, cols]
        return depth

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frames, camera, disparity = self.items[index]
        loaded = [self._image(p) for p in frames]
        if any(full != loaded[1][1] for _, full in loaded):
            raise DataError(f"the frames of {frames[1]!r} differ in size")
        images, full = np.stack([image for image, _ in loaded]), loaded[1][1]
        shape = images.shape[1:3]
        K, baseline = self._camera(camera)
        fx = K[0, 0]  # disparity is in pixels of the full-size image
        K[0] *= shape[1] / full[1]
        K[1] *= shape[0] / full[0]
        depth = self._depth(disparity, fx, baseline, shape) if self.has_depth else np.zeros(shape, np.float32)
        return {
            "frames": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            "depth": torch.from_numpy(depth),
            "intrinsics": torch.from_numpy(K).float(),
        }
