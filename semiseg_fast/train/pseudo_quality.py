"""Pseudo-label quality where the unlabeled images have ground truth (always on the embedded data):
at each evaluation, the method's pseudo-labels for whole, unaugmented unlabeled images against the
truth. Coverage: the share of valid pixels (truth not ignored) the method's filter keeps; accuracy:
the share of those kept whose pseudo-label is right; mIoU: of the unfiltered pseudo-labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import SegmentationFolder
from ..data.subset import Subset
from ..metrics import confusion_matrix, iou_from_confusion
from .distributed import all_reduce_sum
from .evaluate import model_input, same_size_batches
from .methods import Method

COLUMNS = ("pseudo_coverage", "pseudo_accuracy", "pseudo_miou")


@dataclass
class PseudoLabelQuality:
    coverage: float  # kept valid pixels / valid pixels
    accuracy: float  # right kept pixels / kept pixels; NaN when the filter keeps none
    miou: float  # of the unfiltered pseudo-labels, a fraction like EvalResult.miou

    def row(self) -> dict[str, float | str]:
        """The metrics.csv columns; an undefined value is left empty."""
        values = (self.coverage, self.accuracy, self.miou)
        return {key: v if math.isfinite(v) else "" for key, v in zip(COLUMNS, values)}

    def summary(self) -> str:
        percent = lambda v: f"{100 * v:.1f}%" if math.isfinite(v) else "n/a"
        miou = f"{100 * self.miou:.2f}" if math.isfinite(self.miou) else "n/a"
        return f"pseudo-labels kept {percent(self.coverage)}, {percent(self.accuracy)} right, mIoU {miou}"


@dataclass
class TruthSample:
    """``images[k]`` is (image, ground truth) of the unlabeled split's image ``indices[k]``."""

    images: Dataset
    indices: list[int]


def has_pseudo_labels(method: Method) -> bool:
    """A method that overrides :meth:`Method.pseudo_labels` (the base's None means it has none).
    Decided from the class, so that every process of a distributed run agrees without data."""
    return type(method).pseudo_labels is not Method.pseudo_labels


def truth_sample(unlabeled: Dataset, count: int, num_classes: int) -> TruthSample:
    """``count`` images spread evenly over the unlabeled split (all when it has fewer) with their
    ground truth. A folder's unlabeled split needs a label file for each of them, checked now:
    FileNotFoundError or DataError otherwise."""
    n = len(unlabeled)
    indices = [k * n // count for k in range(count)] if count < n else list(range(n))
    if isinstance(unlabeled, SegmentationFolder) and not unlabeled.labels:
        images = unlabeled.with_labels(indices)
        images.check_labels(num_classes)
        return TruthSample(images, indices)
    return TruthSample(Subset(unlabeled, indices), indices)  # the synthetic split keeps its labels


def _counts(
    labels: torch.Tensor, keep: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """The confusion matrix of the unfiltered labels, then (valid, kept, right) pixel counts, as
    one int64 tensor on the device. A label outside the classes (an image without a pseudo-label)
    stays out of the matrix."""
    truth = truth.long()
    valid = (truth != ignore_index) & (truth >= 0) & (truth < num_classes)
    kept = keep & valid
    right = kept & (labels.long() == truth)
    labelled = (labels >= 0) & (labels < num_classes)
    cm = confusion_matrix(labels, truth.masked_fill(~labelled, -1), num_classes, ignore_index)
    return torch.cat([cm.flatten(), torch.stack([valid.sum(), kept.sum(), right.sum()])])


@torch.no_grad()
def measure(
    method: Method,
    teacher: nn.Module,
    sample: TruthSample,
    epoch: int,
    num_classes: int,
    device: torch.device,
    batch_size: int = 16,
    ignore_index: int = 255,
    channels_last: bool = True,
    amp_dtype: torch.dtype | None = None,
    rank: int = 0,
    world: int = 1,
) -> PseudoLabelQuality:
    """Each process labels images rank, rank + world, ... of ``sample`` with
    ``method.pseudo_labels`` (the teacher in eval mode, under ``amp_dtype`` autocast); the counts
    stay on the device and are summed over processes once, so every process returns the same."""
    was_training = teacher.training
    teacher.eval()
    counts = torch.zeros(num_classes * num_classes + 3, dtype=torch.int64, device=device)
    try:
        for batch in same_size_batches(sample.images, range(rank, len(sample.indices), world), batch_size):
            images = model_input(torch.stack([image for _, (image, _) in batch]), device, channels_last)
            truth = torch.stack([t for _, (_, t) in batch]).to(device)
            indices = [sample.indices[k] for k, _ in batch]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                labels, keep = method.pseudo_labels(teacher, images, indices, epoch)
            counts += _counts(labels, keep, truth, num_classes, ignore_index)
    finally:
        teacher.train(was_training)
    counts = all_reduce_sum(counts).cpu()
    valid, kept, right = counts[-3:].tolist()
    miou, _ = iou_from_confusion(counts[:-3].view(num_classes, num_classes))
    return PseudoLabelQuality(
        kept / valid if valid else math.nan,
        right / kept if kept else math.nan,
        miou,
    )
