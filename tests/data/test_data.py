import numpy as np
import pytest
import torch
from PIL import Image

from semiseg_fast.data import (
    DataError,
    SegmentationFolder,
    SyntheticScenes,
    denormalize,
    normalize,
    strong_augment,
    weak_augment,
)
from semiseg_fast.data.synthetic import NUM_CLASSES
from semiseg_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, gaussian_blur, jitter_and_blur
from semiseg_fast.mixing import cutmix_box


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_synthetic_is_deterministic_and_order_independent():
    a, b = SyntheticScenes(6, (40, 48), seed=3), SyntheticScenes(6, (40, 48), seed=3, cache=False)
    forward = [a[i] for i in range(6)]
    backward = [b[i] for i in reversed(range(6))][::-1]
    for (ia, la), (ib, lb) in zip(forward, backward):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not torch.equal(forward[0][0], forward[1][0])
    assert not torch.equal(SyntheticScenes(1, (40, 48), seed=4)[0][0], forward[0][0])
    image, label = forward[0]
    assert image.shape == (3, 40, 48) and image.dtype == torch.uint8
    assert label.shape == (40, 48) and label.dtype == torch.uint8 and int(label.max()) < NUM_CLASSES


def test_synthetic_cache_returns_copies():
    ds = SyntheticScenes(2, (16, 16))
    image, _ = ds[0]
    image.zero_()
    assert int(ds[0][0].sum()) > 0


def test_every_class_appears_and_objects_are_not_tiny():
    labels = torch.stack([SyntheticScenes(40, (64, 64), seed=0)[i][1] for i in range(40)])
    counts = torch.bincount(labels.flatten().long(), minlength=NUM_CLASSES)
    assert (counts > 0).all()
    assert 0.5 < counts[0] / counts.sum() < 0.95  # mostly background, but objects are a real share


def test_synthetic_errors():
    with pytest.raises(ValueError, match="num_images"):
        SyntheticScenes(0)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticScenes(2, (4, 4))
    with pytest.raises(IndexError, match="index"):
        SyntheticScenes(2, (16, 16))[2]


def test_weak_augment_pads_with_ignore_and_is_seeded():
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    label = torch.randint(0, 5, (20, 24), dtype=torch.uint8)
    img, lab = weak_augment(image, label, 32, _gen(0), scale_range=(1.0, 1.0), flip=False)
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32) and img.dtype == lab.dtype == torch.uint8
    assert int((lab == 255).sum()) == 32 * 32 - 20 * 24  # only the padding is ignored
    again = weak_augment(image, label, 32, _gen(0), scale_range=(1.0, 1.0), flip=False)
    assert torch.equal(img, again[0]) and torch.equal(lab, again[1])
    # with no rescale the crop keeps image and label aligned: the label's valid pixels are the image's
    inside = lab != 255
    assert torch.equal(img[:, inside].sort(dim=1).values, image.reshape(3, -1).sort(dim=1).values)


def test_weak_augment_flip_and_scale_keep_alignment():
    # a label equal to a function of the image survives any scale / crop / flip (nearest vs bilinear aside)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 8:24, 4:12] = 200
    label = (image[0] > 0).to(torch.uint8)
    for seed in range(5):
        img, lab = weak_augment(image, label, 24, _gen(seed), scale_range=(0.75, 1.5))
        core = lab == 1
        assert (img[0][core] >= 90).float().mean() > 0.85  # boundary pixels may be off by one


def test_strong_augment_changes_colour_only():
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    out = strong_augment(image, _gen(1), jitter_p=1.0, gray_p=0.0, blur_p=0.0)
    assert out.shape == image.shape and out.dtype == torch.uint8 and not torch.equal(out, image)
    assert torch.equal(out, strong_augment(image, _gen(1), jitter_p=1.0, gray_p=0.0, blur_p=0.0))
    gray = strong_augment(image, _gen(1), jitter_p=0.0, gray_p=1.0, blur_p=0.0)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_jitter_and_blur_of_mixed_images_is_strong_augments_colour_and_a_gaussian():
    """The mixes' augmentation (normalised batches, in the step) is strong_augment's jitter at
    another strength and gaussian_blur, drawn per image from the generator."""
    images = normalize(torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8))
    assert torch.allclose(jitter_and_blur(images, _gen(0), jitter_p=0.0, blur_p=0.0), images, atol=1e-6)
    blurred = jitter_and_blur(images, _gen(0), jitter_p=0.0, blur_p=1.0, sigma_range=(0.7, 0.7))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (gaussian_blur(images * std + mean, 0.7) - mean) / std
    torch.testing.assert_close(blurred, expected, atol=1e-5, rtol=1e-5)
    jittered = jitter_and_blur(images, _gen(1), jitter_p=1.0, blur_p=0.0)
    assert torch.equal(jittered, jitter_and_blur(images, _gen(1), jitter_p=1.0, blur_p=0.0))
    assert all(not torch.allclose(jittered[i], images[i], atol=1e-3) for i in range(3))
    assert not torch.allclose(jittered[0] - images[0], jittered[1] - images[1], atol=1e-3)  # drawn per image


def test_cutmix_box_bounds():
    hits = 0
    for seed in range(50):
        box = cutmix_box(30, 40, _gen(seed), p=0.5)
        assert box.shape == (30, 40) and box.dtype == torch.bool
        if box.any():
            hits += 1
            rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
            area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(box.sum()) == int(area)  # one rectangle
            assert int(area) <= 0.4 * 30 * 40 + 40
    assert 10 < hits < 40
    assert not cutmix_box(8, 8, _gen(0), p=0.0).any()


def test_normalize_round_trip():
    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(denormalize(normalize(images)), images)


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def test_voc_folder(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / "JPEGImages" / f"{name}.jpg", np.full((10, 12, 3), 100, np.uint8))
        _write(tmp_path / "SegmentationClass" / f"{name}.png", np.full((10, 12), 3, np.uint8))
    (tmp_path / "labeled.txt").write_text("a\nJPEGImages/b.jpg SegmentationClass/b.png\n")
    ds = SegmentationFolder(str(tmp_path), "labeled.txt")
    assert len(ds) == 2
    for i in range(2):
        image, label = ds[i]
        assert image.shape == (3, 10, 12) and label.shape == (10, 12) and int(label[0, 0]) == 3
    unlabeled = SegmentationFolder(str(tmp_path), "labeled.txt", labels=False)
    assert int(unlabeled[0][1].unique()) == 255


def test_cityscapes_folder(tmp_path):
    rel = "leftImg8bit/train/x/x_000001_leftImg8bit.png"
    _write(tmp_path / rel, np.zeros((6, 8, 3), np.uint8))
    _write(tmp_path / "gtFine/train/x/x_000001_gtFine_labelTrainIds.png", np.full((6, 8), 7, np.uint8))
    (tmp_path / "val.txt").write_text(rel + "\n")
    ds = SegmentationFolder(str(tmp_path), str(tmp_path / "val.txt"))
    assert ds.layout == "cityscapes" and int(ds[0][1][0, 0]) == 7


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="labeled.txt"):
        SegmentationFolder(str(tmp_path), "labeled.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt"):
        SegmentationFolder(str(tmp_path), "empty.txt")
    (tmp_path / "s.txt").write_text("missing\n")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        SegmentationFolder(str(tmp_path), "s.txt", layout="voc")
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "broken.jpg").write_bytes(b"not a jpeg")
    _write(tmp_path / "SegmentationClass" / "broken.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "s.txt").write_text("broken\n")
    with pytest.raises(DataError, match="broken.jpg"):
        SegmentationFolder(str(tmp_path), "s.txt")[0]
    _write(tmp_path / "JPEGImages" / "big.jpg", np.zeros((5, 5, 3), np.uint8))
    _write(tmp_path / "SegmentationClass" / "big.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "s.txt").write_text("big\n")
    with pytest.raises(DataError, match="big.png"):
        SegmentationFolder(str(tmp_path), "s.txt")[0]
    with pytest.raises(ValueError, match="layout"):
        SegmentationFolder(str(tmp_path), "s.txt", layout="coco")
