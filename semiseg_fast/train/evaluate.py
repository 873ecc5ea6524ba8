"""Validation: whole-image or sliding-window prediction, a confusion matrix summed over
processes, mIoU and per-class IoU."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import normalize
from ..metrics import confusion_matrix, iou_from_confusion
from ..models import model_outputs
from .distributed import all_reduce_sum


@dataclass
class EvalResult:
    miou: float
    per_class: torch.Tensor  # float64 (C,), NaN for classes absent from labels and predictions
    confusion: torch.Tensor  # int64 (C, C), rows = ground truth


class AveragedNetworks(nn.Module):
    """The prediction of several networks as one: the log of their mean softmax, at the networks'
    output resolution (argmax: the class the averaged probabilities favour)."""

    def __init__(self, *networks: nn.Module):
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [model_outputs(net(x))[0].float().softmax(dim=1) for net in self.networks]
        return torch.stack(probs).mean(dim=0).log()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits, _ = model_outputs(model(x))
    return F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=True)


def slide_logits(model: nn.Module, x: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Average of the logits of ``window``-sized crops every ``stride`` pixels (the image padded
    to at least one window), as U2PL and UniMatch evaluate Cityscapes."""
    n, _, h, w = x.shape
    ph, pw = max(window - h, 0), max(window - w, 0)
    xp = F.pad(x, (0, pw, 0, ph))
    H, W = xp.shape[-2:]
    rows = list(range(0, H - window, stride)) + [H - window]
    cols = list(range(0, W - window, stride)) + [W - window]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, H, W, device=x.device)
    for top in rows:
        for left in cols:
            part = _logits(model, xp[:, :, top : top + window, left : left + window])
            if total is None:
                total = x.new_zeros(n, part.shape[1], H, W, dtype=torch.float32)
            total[:, :, top : top + window, left : left + window] += part
            count[:, :, top : top + window, left : left + window] += 1
    return (total / count)[:, :, :h, :w]


def model_input(images_uint8: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    x = normalize(images_uint8).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def same_size_batches(dataset: Dataset, items: Iterable[int], batch_size: int) -> Iterator[list[tuple[int, Any]]]:
    """``(item, dataset[item])`` pairs in order, at most ``batch_size`` a batch, a new batch where
    the image size changes (images of different sizes cannot be stacked)."""
    batch: list[tuple[int, Any]] = []
    for i in items:
        sample = dataset[i]
        if batch and (len(batch) == batch_size or batch[0][1][0].shape != sample[0].shape):
            yield batch
            batch = []
        batch.append((i, sample))
    if batch:
        yield batch


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    images_uint8: torch.Tensor,
    device: torch.device,
    mode: str = "whole",
    window: int = 512,
    stride: int = 341,
    channels_last: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    x = model_input(images_uint8, device, channels_last)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = _logits(model, x) if mode == "whole" else slide_logits(model, x, window, stride)
    return logits.argmax(1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    mode: str = "whole",
    window: int = 512,
    stride: int = 341,
    batch_size: int = 16,
    ignore_index: int = 255,
    channels_last: bool = True,
    amp_dtype: torch.dtype | None = None,
    rank: int = 0,
    world: int = 1,
) -> EvalResult:
    """Each process evaluates images rank, rank + world, ...; the confusion matrices are summed
    over processes, so every process returns the same result. Images of different sizes are
    predicted in separate batches."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for batch in same_size_batches(dataset, range(rank, len(dataset), world), batch_size):
        images = torch.stack([image for _, (image, _) in batch])
        labels = torch.stack([label for _, (_, label) in batch]).to(device)
        pred = predict_labels(model, images, device, mode, window, stride, channels_last, amp_dtype)
        cm.add_(confusion_matrix(pred, labels, num_classes, ignore_index))
    model.train(was_training)
    all_reduce_sum(cm)
    miou, per_class = iou_from_confusion(cm.cpu())
    return EvalResult(miou, per_class, cm.cpu())


def format_iou_table(result: EvalResult, class_names: list[str]) -> str:
    lines = [f"{'class':<16}{'IoU':>8}"]
    for name, iou in zip(class_names, result.per_class.tolist()):
        lines.append(f"{name:<16}{'n/a' if iou != iou else f'{100 * iou:.2f}':>8}")
    lines.append(f"{'mIoU':<16}{100 * result.miou:>8.2f}")
    return "\n".join(lines)
