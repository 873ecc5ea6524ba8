import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semiseg_fast.data import CityscapesClips, DataError, SyntheticClips, SyntheticScenes
from semiseg_fast.data.clips import OBJECT_DEPTH, ClipGeometry, surface_grain
from semiseg_fast.data.synthetic import render_layers


def _no_grain(noise, sigma, top):
    return np.zeros_like(noise)


def _project(depth, K, R, T):
    """Where frame t's pixel centres land in another frame: (H, W, 2) pixels (x, y)."""
    h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pixels = torch.stack([xs, ys, torch.ones_like(xs)], -1).double()
    points = pixels @ torch.linalg.inv(K).T * depth[..., None]
    moved = (points @ R.T + T) @ K.T
    return moved[..., :2] / moved[..., 2:]


def test_frame_t_is_the_segmentation_image_and_clips_are_deterministic():
    clips, scenes = SyntheticClips(5, (40, 48), seed=3), SyntheticScenes(5, (40, 48), seed=3)
    uncached = SyntheticClips(5, (40, 48), seed=3, cache=False)
    for i in reversed(range(5)):
        item = clips[i]
        assert item["frames"].shape == (3, 3, 40, 48) and item["frames"].dtype == torch.uint8
        assert torch.equal(item["frames"][1], scenes[i][0])
        assert torch.equal(item["frames"], uncached[i]["frames"]) and torch.equal(item["depth"], uncached[i]["depth"])
        assert not torch.equal(item["frames"][0], item["frames"][1])
        assert not torch.equal(item["frames"][2], item["frames"][1])
    item = clips[0]
    assert item["depth"].dtype == torch.float32 and item["depth"].shape == (40, 48)
    assert torch.equal(item["intrinsics"], torch.tensor([[40.0, 0, 24], [0, 40, 20], [0, 0, 1]]))
    item["frames"].zero_()
    assert int(clips[0]["frames"].sum()) > 0  # the cache hands out copies


def test_depth_follows_the_occlusion_order():
    size = (48, 48)
    for index in range(12):
        geometry = ClipGeometry(0, index, size)
        _, label, top = render_layers(0, index, size)
        depth = geometry.depth(top)
        objects, ground = depth[top > 0], depth[top == 0]
        assert np.all((objects >= OBJECT_DEPTH[0]) & (objects <= OBJECT_DEPTH[1]))
        assert ground.size == 0 or ground.min() > OBJECT_DEPTH[1]
        assert np.array_equal(top > 0, label > 0)
        for layer in range(2, int(top.max()) + 1):  # a later object is nearer
            assert geometry.object_depths[layer - 1] < geometry.object_depths[layer - 2]
        rows = depth.mean(axis=1, where=top == 0)  # the ground recedes towards the top
        rows = rows[np.isfinite(rows)]
        assert np.all(np.diff(rows) < 0)


def test_each_ray_lands_on_its_layer():
    """Projecting where a frame's ray meets a layer back into that frame gives the pixel again."""
    size = (24, 32)
    geometry = ClipGeometry(1, 4, size)
    K, side = geometry.K, 24.0
    ys, xs = np.meshgrid(np.arange(24) + 0.5, np.arange(32) + 0.5, indexing="ij")
    for offset in (-1, 1):
        R, T = geometry.motion(offset)
        sample = geometry.layer_grid(offset)
        for layer in range(5):
            y, x = sample(layer, 4)
            rays = np.stack([(x * side - K[0, 2]) / K[0, 0], (y * side - K[1, 2]) / K[1, 1], np.ones_like(x)], -1)
            points = rays / (rays @ geometry.plane(layer))[..., None]
            moved = points @ R.T + T
            assert np.allclose(K[0, 0] * moved[..., 0] / moved[..., 2] + K[0, 2], xs, atol=1e-9)
            assert np.allclose(K[1, 1] * moved[..., 1] / moved[..., 2] + K[1, 2], ys, atol=1e-9)


def test_true_depth_and_motion_explain_the_neighbouring_frames():
    """Without grain, frame t warped from t+-1 by the true depth and motion matches frame t
    far better than the unwarped neighbour does, and on the objects better than a flat depth.
    (Nearest sampling misses by up to half a pixel: thin texture edges differ even when right.)"""
    size = (48, 48)
    shares = {f"{k}{part}": [] for k in ("true", "identity", "flat") for part in ("", " objects")}
    for index in range(6):
        geometry = ClipGeometry(2, index, size)
        frame_t, _, top = render_layers(2, index, size, None, _no_grain)
        depth = torch.from_numpy(geometry.depth(top)).double()
        K = torch.from_numpy(geometry.K)
        for offset in (-1, 1):
            other = render_layers(2, index, size, geometry.layer_grid(offset), _no_grain)[0]
            R, T = (torch.from_numpy(a) for a in geometry.motion(offset))
            candidates = {
                "true": _project(depth, K, R, T),
                "identity": _project(depth, K, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)),
                "flat": _project(torch.full_like(depth, float(depth.median())), K, R, T),
            }
            for name, where in candidates.items():
                grid = where / torch.tensor([48.0, 48.0]) * 2 - 1
                source = torch.from_numpy(other).permute(2, 0, 1)[None].double()
                warped = F.grid_sample(source, grid[None], mode="nearest", align_corners=False)
                error = (warped[0] - torch.from_numpy(frame_t).permute(2, 0, 1)).abs().amax(0)
                inside = (grid.abs() < 0.95).all(-1)
                shares[name].append(float((error[inside] <= 4).double().mean()))
                on_objects = inside & (torch.from_numpy(top) > 0)
                shares[name + " objects"].append(float((error[on_objects] <= 4).double().mean()))
    share = {k: float(np.mean(v)) for k, v in shares.items()}
    assert share["true"] > 0.85 and share["true"] > share["identity"] + 0.15, share
    assert share["true objects"] > share["flat objects"] + 0.1, share


def test_a_camera_that_stays_sees_frame_t_again():
    """The grain is sampled from the surfaces: without motion a neighbour is frame t, grain and all
    (up to the rounding of a bilinear weight of 1 to a grey level)."""
    size = (40, 48)
    for index in range(4):
        geometry = ClipGeometry(1, index, size)
        geometry.R, geometry.T = np.eye(3), np.zeros(3)
        frame_t, _, top = render_layers(1, index, size)
        grid = geometry.layer_grid(1)
        still = render_layers(1, index, size, grid, surface_grain(1, index, top, grid))[0]
        assert np.abs(still.astype(int) - frame_t.astype(int)).max() <= 1


def test_grain_moves_with_the_surfaces():
    """A neighbour's grain, sampled where the true depth and motion take frame t's pixels, is frame
    t's grain; where the pixels stay put, far less so (slow clips barely move the far ground)."""
    size = (48, 48)
    same, still = [], []
    for index in range(6):
        geometry = ClipGeometry(2, index, size)
        frame_t, _, top = render_layers(2, index, size)
        grain_t = frame_t.astype(float) - render_layers(2, index, size, None, _no_grain)[0]
        depth, K = torch.from_numpy(geometry.depth(top)).double(), torch.from_numpy(geometry.K)
        for offset in (-1, 1):
            grid = geometry.layer_grid(offset)
            other = render_layers(2, index, size, grid, surface_grain(2, index, top, grid))[0].astype(float)
            grain = torch.from_numpy(other - render_layers(2, index, size, grid, _no_grain)[0]).permute(2, 0, 1)[None]
            R, T = (torch.from_numpy(a) for a in geometry.motion(offset))
            eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
            for where, out in ((_project(depth, K, R, T), same), (_project(depth, K, eye, zero), still)):
                grid_ = where / torch.tensor([48.0, 48.0]) * 2 - 1
                sampled = F.grid_sample(grain, grid_[None], mode="bilinear", align_corners=False)[0]
                inside = (grid_.abs() < 0.9).all(-1)
                a, b = sampled.permute(1, 2, 0)[inside].flatten(), torch.from_numpy(grain_t)[inside].flatten()
                out.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
    assert np.mean(same) > 0.7 and np.mean(same) > np.mean(still) + 0.4, (same, still)


def test_synthetic_clips_errors():
    with pytest.raises(ValueError, match="num_images"):
        SyntheticClips(0)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticClips(2, (4, 4))
    with pytest.raises(IndexError, match="index"):
        SyntheticClips(2, (16, 16))[2]


def _cityscapes_sequence(root, frame=19, with_disparity=True):
    folder = root / "leftImg8bit_sequence" / "train" / "ulm"
    folder.mkdir(parents=True)
    for f in (frame - 1, frame, frame + 1):
        Image.fromarray(np.full((16, 32, 3), f, np.uint8)).save(folder / f"ulm_000002_{f:06d}_leftImg8bit.png")
    camera = root / "camera" / "train" / "ulm"
    camera.mkdir(parents=True)
    info = {"intrinsic": {"fx": 20.0, "fy": 21.0, "u0": 16.0, "v0": 8.0}, "extrinsic": {"baseline": 0.5}}
    (camera / f"ulm_000002_{frame:06d}_camera.json").write_text(json.dumps(info))
    if with_disparity:
        disparity = np.zeros((16, 32), np.uint16)
        disparity[:, 16:] = 1 + 256 * 2  # a disparity of 2 pixels: depth 0.5 * 20 / 2 = 5
        disparity[0, 16] = 1  # infinitely far: unknown
        d = root / "disparity" / "train" / "ulm"
        d.mkdir(parents=True)
        Image.fromarray(disparity).save(d / f"ulm_000002_{frame:06d}_disparity.png")
    (root / "train.txt").write_text(f"leftImg8bit/train/ulm/ulm_000002_{frame:06d}_leftImg8bit.png gtFine/x.png\n")


def test_cityscapes_clips(tmp_path):
    _cityscapes_sequence(tmp_path)
    item = CityscapesClips(str(tmp_path), "train.txt")[0]
    assert item["frames"].shape == (3, 3, 16, 32)
    assert [int(item["frames"][i, 0, 0, 0]) for i in range(3)] == [18, 19, 20]
    assert torch.equal(item["intrinsics"], torch.tensor([[20.0, 0, 16], [0, 21, 8], [0, 0, 1]]))
    expected = torch.zeros(16, 32)
    expected[:, 16:] = 5.0
    expected[0, 16] = 0.0
    assert torch.equal(item["depth"], expected)
    half = CityscapesClips(str(tmp_path), "train.txt", size=(8, 16))[0]
    assert half["frames"].shape == (3, 3, 8, 16) and half["depth"].shape == (8, 16)
    assert torch.equal(half["intrinsics"], torch.tensor([[10.0, 0, 8], [0, 10.5, 4], [0, 0, 1]]))
    assert torch.equal(half["depth"], expected[::2, ::2])  # nearest: every other row and column


def test_cityscapes_clips_without_disparity_have_no_depth(tmp_path):
    _cityscapes_sequence(tmp_path, with_disparity=False)
    ds = CityscapesClips(str(tmp_path), "train.txt")
    assert not ds.has_depth and int(ds[0]["depth"].count_nonzero()) == 0


def test_cityscapes_clips_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit_sequence"):
        CityscapesClips(str(tmp_path), "train.txt")
    _cityscapes_sequence(tmp_path)
    with pytest.raises(ValueError, match="step"):
        CityscapesClips(str(tmp_path), "train.txt", step=0)
    with pytest.raises(ValueError, match="size"):
        CityscapesClips(str(tmp_path), "train.txt", size=(2, 2))
    with pytest.raises(FileNotFoundError, match="000017"):
        CityscapesClips(str(tmp_path), "train.txt", step=2)
    (tmp_path / "bad.txt").write_text("somewhere/x.png\n")
    with pytest.raises(ValueError, match="somewhere/x.png"):
        CityscapesClips(str(tmp_path), "bad.txt")
    (tmp_path / "camera/train/ulm/ulm_000002_000019_camera.json").write_text("{")
    with pytest.raises(DataError, match="camera.json"):
        CityscapesClips(str(tmp_path), "train.txt")[0]
