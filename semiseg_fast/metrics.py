"""Segmentation metrics from a confusion matrix accumulated on the device."""

from __future__ import annotations

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """int64 (C, C) counts, rows = ground truth, columns = prediction; pixels whose target is
    ``ignore_index`` (or outside [0, C)) are not counted. No host sync."""
    if pred.shape != target.shape:
        raise ValueError(f"pred, target: expected the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    for name, t in (("pred", pred), ("target", target)):
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().clamp(0, num_classes - 1)
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = torch.where(keep, target * num_classes + pred, num_classes * num_classes)
    counts = torch.bincount(index, minlength=num_classes * num_classes + 1)
    return counts[:-1].view(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mIoU, per-class IoU as float64). A class absent from both the labels and the predictions
    has no IoU (NaN) and is left out of the mean."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    per_class = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~per_class.isnan()
    miou = float(per_class[present].mean()) if bool(present.any()) else float("nan")
    return miou, per_class


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if int(total) > 0 else float("nan")
