"""Datasets of a run (labeled, unlabeled, validation) and their per-step loaders."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import (
    DataError,
    SegmentationFolder,
    SyntheticScenes,
    strong_augment,
    synthetic,
    weak_augment,
)
from ..data.pseudo_labels import PseudoLabels, item_ids
from ..data.scene_splits import read_scene_split, scene_id
from ..data.subset import Subset
from ..mixing import cutmix_box, cutout_box
from .batches import StepBatches

SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED = 0, 1  # fixed: the data does not change with the run's seed


@dataclass
class RunData:
    labeled: Dataset
    unlabeled: Dataset | None
    val: Dataset
    num_classes: int
    class_names: list[str]


def build_datasets(data_cfg: dict[str, Any], with_unlabeled: bool = True) -> RunData:
    """The synthetic pool split by ``labeled_fraction`` (drawn by ``split_seed``: the same split
    for every run seed and method), or a voc / cityscapes folder with its split files."""
    if data_cfg["name"] == "synthetic":
        size = int(data_cfg["image_size"])
        pool = SyntheticScenes(int(data_cfg["synthetic_train"]), (size, size), seed=SYNTHETIC_TRAIN_SEED)
        labeled_ids, unlabeled_ids = synthetic_split(data_cfg, len(pool))
        labeled = Subset(pool, labeled_ids)
        unlabeled = Subset(pool, unlabeled_ids) if unlabeled_ids else None
        val = SyntheticScenes(int(data_cfg["synthetic_val"]), (size, size), seed=SYNTHETIC_VAL_SEED)
        return RunData(
            labeled, unlabeled if with_unlabeled else None, val, synthetic.NUM_CLASSES, list(synthetic.CLASS_NAMES)
        )
    num_classes = data_cfg["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"config: data.num_classes expected an integer >= 2 for {data_cfg['name']} folders, got {num_classes!r}"
        )
    root, ignore = data_cfg["root"], int(data_cfg["ignore_index"])
    folder = lambda split, labels=True: SegmentationFolder(
        root, data_cfg[split], layout=data_cfg["name"], ignore_index=ignore, labels=labels
    )
    unlabeled = folder("unlabeled_split", labels=False) if with_unlabeled else None
    labeled, val = folder("labeled_split"), folder("val_split")
    for split in (labeled, val):
        split.check_labels(num_classes)  # before training: a bad label file is named now, not mid-run
    return RunData(labeled, unlabeled, val, num_classes, [str(i) for i in range(num_classes)])


def synthetic_split(data_cfg: dict[str, Any], pool_size: int) -> tuple[list[int], list[int]]:
    """(labeled, unlabeled) pool indices: from the split files under ``data.root`` when it is set,
    else ``labeled_fraction`` of the pool drawn by ``split_seed``."""
    if data_cfg["root"]:
        paths = [os.path.join(data_cfg["root"], data_cfg[key]) for key in ("labeled_split", "unlabeled_split")]
        labeled, unlabeled = (read_scene_split(path, pool_size) for path in paths)
        both = sorted(set(labeled) & set(unlabeled))
        if both:
            raise ValueError(f"{paths[0]}, {paths[1]}: {len(both)} images are in both, {scene_id(both[0])} first")
        return labeled, unlabeled
    order = torch.randperm(pool_size, generator=torch.Generator().manual_seed(int(data_cfg["split_seed"]))).tolist()
    n_labeled = max(1, round(pool_size * float(data_cfg["labeled_fraction"])))
    return order[:n_labeled], order[n_labeled:]


def _crop_of(item: tuple[int, ...], data_cfg: dict[str, Any]):
    """The crop size of a sampler item: its third entry under a schedule, else the config's."""
    return item[2] if len(item) > 2 else data_cfg["crop_size"]


class LabeledView(Dataset):
    """Weakly augmented (image, label) crops; items are ``(index, augmentation_seed)`` or
    ``(index, augmentation_seed, crop_size)``. With ``maps``, a function of an item's index giving
    a float (H, W) map of its image, the map is cropped with the image (nearest, 0 in padding) and
    comes third; the crops are the same."""

    def __init__(self, base: Dataset, data_cfg: dict[str, Any], maps: Callable[[int], torch.Tensor] | None = None):
        self.base, self.cfg, self.maps = base, data_cfg, maps

    def __len__(self) -> int:
        return len(self.base)

    def _weak(self, item: tuple[int, ...], keep_label: bool, extras: torch.Tensor | None = None):
        """(image, label, [extras,] generator) of the item's weak crop (see :func:`weak_augment`)."""
        g = torch.Generator().manual_seed(item[1])
        image, label = self.base[item[0]]
        if not keep_label:  # only the padding added by the crop stays ignored
            label = torch.zeros_like(label)
        out = weak_augment(
            image,
            label,
            _crop_of(item, self.cfg),
            g,
            scale_range=tuple(self.cfg["scale_range"]),
            ignore_index=self.cfg["ignore_index"],
            extras=extras,
        )
        return (*out, g)

    def __getitem__(self, item: tuple[int, ...]):
        if self.maps is None:
            image, label, _ = self._weak(item, keep_label=True)
            return image, label
        image, label, extra, _ = self._weak(item, keep_label=True, extras=self.maps(item[0])[None].float())
        return image, label, extra[0]


class WeakView(LabeledView):
    """Weakly augmented crops of unlabeled images and their padding masks (True = ignore): the
    view of methods that mix and augment whole images in the step (ClassMix, DepthMix); ``maps``
    as the labeled view's."""

    def __getitem__(self, item: tuple[int, ...]):
        if self.maps is None:
            weak, pad, _ = self._weak(item, keep_label=False)
            return weak, pad == self.cfg["ignore_index"]
        weak, pad, extra, _ = self._weak(item, keep_label=False, extras=self.maps(item[0])[None].float())
        return weak, pad == self.cfg["ignore_index"], extra[0]


class UnlabeledView(LabeledView):
    """Weak view, strong view, padding mask (True = ignore) and a box per image: UniMatch's CutMix
    box, or with ``cutout_size`` PseudoSeg's Cutout square (and its colour jitter, always on).
    ``two_strong`` (UniMatch): weak, strong 1, strong 2, padding, box 1, box 2, the second
    view and box drawn independently after the first."""

    def __init__(
        self,
        base: Dataset,
        data_cfg: dict[str, Any],
        strong_color: bool,
        cutmix_p: float,
        cutout_size: float | None = None,
        two_strong: bool = False,
    ):
        super().__init__(base, data_cfg)
        if two_strong and cutout_size is not None:
            raise ValueError("two_strong: CutMix views only, not with cutout_size")
        self.strong_color, self.cutmix_p, self.cutout_size = strong_color, cutmix_p, cutout_size
        self.two_strong = two_strong

    def _strong(self, weak: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cutout_size is None:
            strong = strong_augment(weak, g) if self.strong_color else weak
            return strong, cutmix_box(weak.shape[1], weak.shape[2], g, p=self.cutmix_p)
        strong = strong_augment(weak, g, jitter_p=1.0, gray_p=0.0, blur_p=0.0) if self.strong_color else weak
        return strong, cutout_box(weak.shape[1], weak.shape[2], g, self.cutout_size)

    def __getitem__(self, item: tuple[int, ...]):
        weak, pad, g = self._weak(item, keep_label=False)
        pad = pad == self.cfg["ignore_index"]
        strong, box = self._strong(weak, g)
        if not self.two_strong:
            return weak, strong, pad, box
        strong2, box2 = self._strong(weak, g)
        return weak, strong, strong2, pad, box, box2


class PseudoLabeledView(Dataset):
    """Weakly augmented crops of pseudo-labeled images (self-training's student data): items as in
    :class:`LabeledView`, index ``i`` meaning the ``i``-th image that has a pseudo-label. Returns
    (image, label) with pixels under ``threshold`` confidence ignored, plus, with ``soft``, the
    stored top-k (classes (K, h, w) int64, probabilities (K, h, w) float32, 0 in padding), and
    with ``strong`` = (colour, cutmix_p) the strong view of Zhu et al.'s student: the crop colour
    jittered, greyed and blurred (with ``colour``), and last a CutMix box for the step to paste
    another pseudo-labeled crop and its labels into.

    The folder must hold labels of exactly these images (its manifest's ids are checked against
    ``unlabeled``'s, its label size against the images', its classes against ``num_classes``)."""

    def __init__(
        self,
        unlabeled: Dataset,
        pseudo_dir: str,
        data_cfg: dict[str, Any],
        threshold: float = 0.0,
        soft: bool = False,
        class_balanced: bool = False,
        num_classes: int | None = None,
        strong: tuple[bool, float] | None = None,
    ):
        self.labels = PseudoLabels(pseudo_dir)
        if soft and not self.labels.topk:
            raise ValueError(f"semi.selftrain.soft: {pseudo_dir!r} has no top-k probabilities (pseudo_label --topk K)")
        self.indices = self.labels.indices
        if not self.indices:
            raise ValueError(f"pseudo_dir: {pseudo_dir!r} lists no pseudo-labelled images")
        self.base, self.cfg, self.pseudo_dir = unlabeled, data_cfg, pseudo_dir
        self.threshold, self.soft, self.class_balanced, self.strong = threshold, soft, class_balanced, strong
        self._check_same_images(num_classes)

    def _check_same_images(self, num_classes: int | None) -> None:
        manifest, where = self.labels.manifest, f"pseudo_dir: {self.pseudo_dir!r}"
        if manifest["split_size"] != len(self.base):
            raise ValueError(
                f"{where} was written for a split of {manifest['split_size']} images, but this run's "
                f"unlabeled split has {len(self.base)}"
            )
        ids = item_ids(self.base)
        wrong = [(i, stored) for i, stored in self.labels.ids.items() if not 0 <= i < len(ids) or ids[i] != stored]
        if wrong:
            i, stored = wrong[0]
            here = repr(ids[i]) if 0 <= i < len(ids) else "no such image"
            raise ValueError(
                f"{where} holds labels of other images than this run's unlabeled split: {len(wrong)} of "
                f"{len(self.labels.ids)} ids differ (image {i} is {stored!r} there, {here} here)"
            )
        stored_classes = manifest.get("num_classes")
        if num_classes is not None and stored_classes != num_classes:
            raise ValueError(f"{where} was written for {stored_classes} classes, but this run has {num_classes}")
        self._load(self.indices[0])  # label size against image size, before any worker starts

    def _load(self, index: int):
        image, _ = self.base[index]
        label, conf, top = self.labels.load(index)
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise DataError(
                f"pseudo_dir: {self.pseudo_dir!r} has a {tuple(label.shape)} label for image "
                f"{self.labels.ids[index]!r}, which is {tuple(image.shape[1:])} in this run"
            )
        return image, label, conf, top

    def __len__(self) -> int:
        return len(self.indices)

    def thresholded(self, label: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """The stored label with the pixels under ``threshold`` confidence ignored: what trains."""
        return label.masked_fill(confidence < self.threshold, self.cfg["ignore_index"])

    def __getitem__(self, item: tuple[int, ...]):
        g = torch.Generator().manual_seed(item[1])
        image, label, conf, top = self._load(self.indices[item[0]])
        ignore = self.cfg["ignore_index"]
        label = self.thresholded(label, conf)
        extras = None
        if self.soft:
            classes, probs = top
            extras = torch.cat([classes.float(), probs])
        out = weak_augment(
            image,
            label,
            _crop_of(item, self.cfg),
            g,
            scale_range=tuple(self.cfg["scale_range"]),
            ignore_index=ignore,
            extras=extras,
            class_balanced=self.class_balanced,
        )
        image, label = out[:2]
        soft = ()
        if self.soft:
            k = out[2].shape[0] // 2
            soft = (out[2][:k].long(), out[2][k:])
        if self.strong is None:
            return (image, label, *soft)
        colour, cutmix_p = self.strong
        if colour:
            image = strong_augment(image, g)
        return (image, label, *soft, cutmix_box(image.shape[1], image.shape[2], g, p=cutmix_p))


def step_loader(
    view: Dataset,
    batch_size: int,
    seed: int,
    stream: int,
    start: int,
    stop: int,
    rank: int,
    world: int,
    num_workers: int,
    schedule=None,
) -> DataLoader:
    sampler = StepBatches(len(view), batch_size, seed, stream, start, stop, rank, world, schedule)
    return DataLoader(view, batch_sampler=sampler, num_workers=num_workers, persistent_workers=False)
