"""Augmentations on uint8 tensors, every random choice drawn from an explicit torch.Generator so
a sample's augmentation is a function of its seed (reproducible, resumable, worker-independent)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..base.draws import randint, uniform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def weak_augment(
    image: torch.Tensor,
    label: torch.Tensor,
    crop_size: int | Sequence[int],
    generator: torch.Generator,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    ignore_index: int = 255,
    extras: torch.Tensor | None = None,
    class_balanced: bool = False,
):
    """Random rescale (bilinear image, nearest label), padding to the crop size (image 0, label
    ``ignore_index``), random crop and horizontal flip. image uint8 (3, H, W), label (H, W).

    ``extras`` (K, H, W): more per-pixel maps (confidence, top-k classes) moved with the label
    (nearest, padding 0); then ``(image, label, extras)`` is returned. ``class_balanced``: the crop
    is centred on a pixel of a class drawn uniformly from those in the label (CSST's centroid
    sampling against class imbalance), instead of placed uniformly."""
    crop_h, crop_w = _pair(crop_size, "crop_size")
    if image.dim() != 3 or label.shape != image.shape[1:]:
        raise ValueError(
            f"image, label: expected (3, H, W) and (H, W), got {tuple(image.shape)} and {tuple(label.shape)}"
        )
    if extras is not None and (extras.dim() != 3 or extras.shape[1:] != label.shape):
        raise ValueError(f"extras: expected (K, H, W) with (H, W) = {tuple(label.shape)}, got {tuple(extras.shape)}")
    scale = uniform(generator, *scale_range)
    h, w = image.shape[1:]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
    lab = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0]
    ext = None if extras is None else F.interpolate(extras[None].float(), size=(nh, nw), mode="nearest")[0]
    pad_h, pad_w = max(crop_h - nh, 0), max(crop_w - nw, 0)
    if pad_h or pad_w:
        img = F.pad(img, (0, pad_w, 0, pad_h), value=0.0)
        lab = F.pad(lab, (0, pad_w, 0, pad_h), value=float(ignore_index))
        ext = None if ext is None else F.pad(ext, (0, pad_w, 0, pad_h), value=0.0)
    centre = _class_centre(lab, ignore_index, generator) if class_balanced else None
    if centre is None:
        top = randint(generator, img.shape[1] - crop_h + 1)
        left = randint(generator, img.shape[2] - crop_w + 1)
    else:
        top = min(max(centre[0] - crop_h // 2, 0), img.shape[1] - crop_h)
        left = min(max(centre[1] - crop_w // 2, 0), img.shape[2] - crop_w)
    img = img[:, top : top + crop_h, left : left + crop_w]
    lab = lab[top : top + crop_h, left : left + crop_w]
    ext = None if ext is None else ext[:, top : top + crop_h, left : left + crop_w]
    if flip and uniform(generator, 0, 1) < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
        ext = None if ext is None else ext.flip(-1)
    out = img.round_().clamp_(0, 255).to(torch.uint8), lab.to(label.dtype)
    return out if extras is None else out + (ext.to(extras.dtype),)


def _class_centre(label: torch.Tensor, ignore_index: int, generator: torch.Generator):
    """(row, col) of a random pixel of a class drawn uniformly from those present; None if none."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    if classes.numel() == 0:
        return None
    cls = classes[randint(generator, classes.numel())]
    rows, cols = (label == cls).nonzero(as_tuple=True)
    k = randint(generator, rows.numel())
    return int(rows[k]), int(cols[k])


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


def _rotate_hue(img: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotates colours about the grey axis by ``turns`` of a full circle (a hue shift)."""
    a = 2 * math.pi * turns
    c, s = math.cos(a), math.sin(a)
    k = (1 - c) / 3
    r = math.sqrt(1 / 3) * s
    m = torch.tensor(
        [[c + k, k - r, k + r], [k + r, c + k, k - r], [k - r, k + r, c + k]], dtype=img.dtype, device=img.device
    )
    return torch.einsum("ij,jhw->ihw", m, img)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) filtered by a separable Gaussian of ``sigma`` pixels, reflection at the borders."""
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def strong_augment(
    image: torch.Tensor, generator: torch.Generator, jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.5
) -> torch.Tensor:
    """UniMatch's strong view: colour jitter (brightness, contrast, saturation 0.5, hue 0.25)
    with probability 0.8, greyscale with 0.2, Gaussian blur (sigma 0.1-2) with 0.5."""
    img = image.float() / 255.0
    if uniform(generator, 0, 1) < jitter_p:
        img = _colour_jitter(img, generator, 0.5, 0.25)
    if uniform(generator, 0, 1) < gray_p:
        img = _gray(img).expand(3, -1, -1)
    if uniform(generator, 0, 1) < blur_p:
        img = gaussian_blur(img.contiguous()[None], uniform(generator, 0.1, 2.0))[0]
    return (img.clamp(0, 1) * 255).round_().to(torch.uint8)


def _colour_jitter(img: torch.Tensor, generator: torch.Generator, strength: float, hue: float) -> torch.Tensor:
    """(3, H, W) in [0, 1]: brightness, contrast and saturation factors drawn from
    [1 - strength, 1 + strength], then a hue shift of up to ``hue`` turns either way."""
    img = img * uniform(generator, 1 - strength, 1 + strength)
    mean = _gray(img).mean()
    img = (img - mean) * uniform(generator, 1 - strength, 1 + strength) + mean
    gray = _gray(img)
    img = (img - gray) * uniform(generator, 1 - strength, 1 + strength) + gray
    return _rotate_hue(img.clamp(0, 1), uniform(generator, -hue, hue))


def jitter_and_blur(
    images: torch.Tensor,
    generator: torch.Generator,
    strength: float = 0.25,
    jitter_p: float = 0.8,
    blur_p: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, 1.15),
) -> torch.Tensor:
    """DACS's augmentation of mixed images, applied where they are mixed (on the run's device):
    per image, colour jitter of ``strength`` (brightness, contrast, saturation and hue) with
    probability ``jitter_p``, then a Gaussian blur of sigma drawn from ``sigma_range`` with
    ``blur_p``. Normalised float (N, 3, H, W) in and out (in its dtype and memory format),
    computed in fp32 whatever autocast says."""
    mean, std = _imagenet_stats(images.device)
    out = torch.empty_like(images)
    with torch.autocast(images.device.type, enabled=False):
        for i, image in enumerate(images.float()):
            img = image * std + mean
            if uniform(generator, 0, 1) < jitter_p:
                img = _colour_jitter(img, generator, strength, strength)
            if uniform(generator, 0, 1) < blur_p:
                img = gaussian_blur(img[None], uniform(generator, *sigma_range))[0]
            out[i] = (img.clamp(0, 1) - mean) / std
    return out


def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std, (3, 1, 1) each, on ``device``."""
    return (
        torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
        torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1),
    )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) or (N, 3, H, W) -> float32 with ImageNet mean and std."""
    mean, std = _imagenet_stats(images.device)
    return (images.float() / 255.0 - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = _imagenet_stats(images.device)
    return ((images * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
