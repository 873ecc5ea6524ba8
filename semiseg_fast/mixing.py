"""Mixing two images and their pseudo-labels with a binary mask: the masks of CutMix (as UniMatch
and as CPS draw them), ClassMix and DepthMix, and the mixed target.

Because a mask is binary, the pseudo-label of a mixed image is a per-pixel choice between the two
images' (label, confidence): mixing the teacher's softmaxes and taking max / argmax gives exactly
the same. So the teacher's statistics are computed once per image by one fused pass
(:func:`semiseg_fast.pixel_stats`) and :func:`mix_pseudo_labels` selects from them; mixed logits
or softmaxes never exist. Every mask here is bool (N, H, W), True where the mixed image takes
image ``a``.
"""

from __future__ import annotations

import math

import torch

from . import _checks
from .base import not_ignored
from .base.draws import randint, uniform


def _generator_uniform(g: torch.Generator | None, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (high - low) + low


def _maps(name: str, x: object, like: torch.Tensor | None = None) -> torch.Tensor:
    x = _checks.tensor(x, name)
    if x.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D tensor (N, H, W), got shape {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(x.shape)}")
    if like is not None:
        _checks.same_device(like, x, name, "the first map")
    return x


def _size(name: str, v: object) -> int:
    v = _checks.integer(v, name)
    if v < 1:
        raise ValueError(f"{name}: expected >= 1, got {v}")
    return v


def cutmix_box(
    height: int,
    width: int,
    generator: torch.Generator,
    p: float = 0.5,
    size_min: float = 0.02,
    size_max: float = 0.4,
    ratio_min: float = 0.3,
    ratio_max: float = 1 / 0.3,
) -> torch.Tensor:
    """bool (H, W), True inside a random box of area fraction in [size_min, size_max] and aspect
    ratio in [ratio_min, ratio_max] that lies inside the image; all False with probability 1 - p."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    if uniform(generator, 0, 1) >= p:
        return mask
    area = uniform(generator, size_min, size_max) * height * width
    ratio = uniform(generator, ratio_min, ratio_max)
    box_w = max(1, min(width, int(math.sqrt(area / ratio))))
    box_h = max(1, min(height, int(math.sqrt(area * ratio))))
    top, left = randint(generator, height - box_h + 1), randint(generator, width - box_w + 1)
    mask[top : top + box_h, left : left + box_w] = True
    return mask


def cutout_box(height: int, width: int, generator: torch.Generator, size: float = 0.2) -> torch.Tensor:
    """bool (H, W), True inside PseudoSeg's Cutout square: side ``size`` times the shorter image side,
    centre anywhere in the image, clipped at the borders (PseudoSeg: 100 px of a 513 crop)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    side = int(round(size * min(height, width)))
    if side == 0:
        return mask
    top = randint(generator, height) - side // 2  # the centre is uniform over the image
    left = randint(generator, width) - side // 2
    mask[max(0, top) : top + side, max(0, left) : left + side] = True
    return mask


def cutmix_masks(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    size_range: tuple[float, float] = (0.02, 0.4),
    ratio_range: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """UniMatch's CutMix box per image (the training loop's, :func:`cutmix_box`):
    with probability ``p`` one box of area fraction in ``size_range`` and aspect ratio in
    ``ratio_range``, inside the image; True inside the box."""
    n, height, width = _size("n", n), _size("height", height), _size("width", width)
    p = _checks.number(p, "p", low=0.0, high=1.0)
    lo, hi = (_checks.number(v, "size_range", low=0.0, high=1.0) for v in size_range)
    r_lo, r_hi = (_checks.number(v, "ratio_range", low=0.0, low_open=True) for v in ratio_range)
    if lo > hi or r_lo > r_hi:
        raise ValueError(f"size_range, ratio_range: expected low <= high, got {size_range} and {ratio_range}")
    mask = torch.stack([cutmix_box(height, width, generator, p, lo, hi, r_lo, r_hi) for _ in range(n)])
    return mask.to(device) if device is not None else mask


def cps_box_masks(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    num_boxes: int = 3,
    area_range: tuple[float, float] = (0.25, 0.5),
    invert: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """CPS's box masks (also RRN's): ``num_boxes`` in-bounds boxes whose total area fraction is drawn
    from ``area_range`` (each box a ``1 / num_boxes`` share), log-uniform aspect ratio, overlaps
    toggling (XOR). With ``invert=True`` (CPS's setting) the mask is True inside the boxes."""
    n, height, width, num_boxes = (
        _size("n", n),
        _size("height", height),
        _size("width", width),
        _size("num_boxes", num_boxes),
    )
    lo, hi = (_checks.number(v, "area_range", low=0.0, high=1.0) for v in area_range)
    if lo > hi:
        raise ValueError(f"area_range: expected low <= high, got {area_range}")
    area = _generator_uniform(generator, n * num_boxes, lo, hi) / num_boxes
    log_ratio = _generator_uniform(generator, n * num_boxes, 0.0, 1.0) * 2 * math.log(2) - math.log(2)
    pos = torch.rand(n * num_boxes, 2, generator=generator, dtype=torch.float64)
    inside = torch.zeros(n, height, width, dtype=torch.bool)
    for k in range(n * num_boxes):
        i = k // num_boxes
        side = math.sqrt(area[k]) * math.sqrt(height * width)
        r = math.exp(log_ratio[k])
        bh = max(1, min(height, round(side * math.sqrt(r))))
        bw = max(1, min(width, round(side / math.sqrt(r))))
        top, left = int(pos[k, 0] * (height - bh + 1)), int(pos[k, 1] * (width - bw + 1))
        inside[i, top : top + bh, left : left + bw] ^= True
    mask = inside if invert else ~inside
    return mask.to(device) if device is not None else mask


def classmix_masks(
    labels: torch.Tensor, generator: torch.Generator | None = None, ignore_index: int = 255
) -> torch.Tensor:
    """ClassMix: per image, ``floor(n / 2)`` of the ``n`` classes present in ``labels`` (the teacher's
    argmax of image a; ``ignore_index`` excluded), drawn at random; True on their pixels."""
    labels = _maps("labels", labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")
    masks = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for i in range(labels.shape[0]):
        classes = torch.unique(labels[i])
        classes = classes[not_ignored(classes, ignore_index)]
        k = classes.numel() // 2
        if k == 0:
            continue
        chosen = classes[torch.randperm(classes.numel(), generator=generator)[:k].to(classes.device)]
        masks[i] = torch.isin(labels[i], chosen)
    return masks


def depthmix_masks(
    disparity_a: torch.Tensor, disparity_b: torch.Tensor, margin: float = 0.03, foreground_threshold: float = 0.0
) -> torch.Tensor:
    """DepthMix (Hoyer et al. 2021): keep image a's pixel where it is at least as near as image b's,
    up to ``margin``: ``d_a >= d_b - margin`` and ``d_a >= foreground_threshold``, with each disparity
    map (larger = nearer) min-max normalised per image first."""
    disparity_a = _maps("disparity_a", disparity_a)
    disparity_b = _maps("disparity_b", disparity_b, disparity_a)
    margin = _checks.number(margin, "margin", low=0.0)
    foreground_threshold = _checks.number(foreground_threshold, "foreground_threshold")

    def normalised(d: torch.Tensor) -> torch.Tensor:
        d = d.float()
        if d.numel() == 0:
            return d
        lo = d.amin(dim=(1, 2), keepdim=True)
        span = d.amax(dim=(1, 2), keepdim=True) - lo
        return (d - lo) / torch.where(span > 0, span, torch.ones_like(span))

    a, b = normalised(disparity_a), normalised(disparity_b)
    return (a >= b - margin) & (a >= foreground_threshold)


def class_means(
    values: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255, check: bool = True
) -> torch.Tensor:
    """fp32 (N, H, W): each pixel's value replaced by the mean of ``values`` over the pixels of its
    image that carry its label; pixels labelled ``ignore_index`` keep their own value. With a
    teacher's labels and a disparity map, DepthMix's masks then follow the predicted class outlines
    (``semi.depthmix.level=class``). ``labels`` must lie in [0, num_classes) or be ``ignore_index``:
    ``check`` verifies it at the cost of one host sync, which training, whose labels are an argmax
    or checked ground truth, skips (``check=False``: on the device, no sync)."""
    values = _maps("values", values)
    labels = _maps("labels", labels, values)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")
    num_classes = _size("num_classes", num_classes)
    kept = not_ignored(labels, ignore_index)
    if check:
        outside = kept & ((labels < 0) | (labels >= num_classes))
        if bool(outside.any()):
            raise ValueError(
                f"labels: expected values in [0, {num_classes}) or ignore_index={ignore_index}, "
                f"got {int(labels[outside][0])}"
            )
    n, values = values.shape[0], values.float()
    # one bucket per (image, class), and one per image for its ignored pixels
    image = torch.arange(n, device=values.device).view(n, 1, 1) * (num_classes + 1)
    bucket = (torch.where(kept, labels.long(), num_classes) + image).flatten()
    flat = values.flatten()
    sums = flat.new_zeros(n * (num_classes + 1)).index_add_(0, bucket, flat)
    counts = flat.new_zeros(n * (num_classes + 1)).index_add_(0, bucket, torch.ones_like(flat))
    means = (sums / counts.clamp_min(1))[bucket].view(values.shape)
    return torch.where(kept, means, values)


def mix_pseudo_labels(
    label_a: torch.Tensor, conf_a: torch.Tensor, label_b: torch.Tensor, conf_b: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, confidence) of the mixed image: image a's where ``mask`` is True, else image b's.
    Equal to the argmax / max of the mixed softmaxes, without forming them."""
    label_a = _maps("label_a", label_a)
    for name, t in (("conf_a", conf_a), ("label_b", label_b), ("conf_b", conf_b), ("mask", mask)):
        _maps(name, t, label_a)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {mask.dtype}")
    return torch.where(mask, label_a, label_b), torch.where(mask, conf_a, conf_b)


def mix_images(image_a: torch.Tensor, image_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) image a where ``mask`` (N, H, W) is True, else image b."""
    image_a, image_b = _checks.tensor(image_a, "image_a"), _checks.tensor(image_b, "image_b")
    if image_a.dim() != 4 or image_b.shape != image_a.shape:
        raise ValueError(
            f"image_a, image_b: expected two (N, C, H, W) tensors of one shape, got "
            f"{tuple(image_a.shape)} and {tuple(image_b.shape)}"
        )
    _checks.same_device(image_a, image_b, "image_b", "image_a")
    mask = _maps("mask", mask)
    _checks.same_device(image_a, mask, "mask", "image_a")
    if mask.shape != (image_a.shape[0],) + tuple(image_a.shape[2:]) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask: expected a bool (N, H, W) = {(image_a.shape[0],) + tuple(image_a.shape[2:])} "
            f"tensor, got {mask.dtype} {tuple(mask.shape)}"
        )
    return torch.where(mask[:, None], image_a, image_b)
