"""VOC- and Cityscapes-style dataset folders with U2PL / UniMatch split files.

VOC: ``root/JPEGImages/<id>.jpg`` with ``root/SegmentationClass/<id>.png`` (or
``SegmentationClassAug``), split lines holding an id. Cityscapes: ``root/leftImg8bit/...`` with
``root/gtFine/..._gtFine_labelTrainIds.png``, split lines holding the image path relative to
root. Either layout also accepts lines of two paths, image then label, relative to root."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..utils.atomic import atomic_open


class DataError(RuntimeError):
    """A dataset file that exists but cannot be used (corrupt, wrong size); names the file."""


def _voc_pair(root: str, item: str) -> tuple[str, str]:
    image = os.path.join(root, "JPEGImages", item + ".jpg")
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        label = os.path.join(root, folder, item + ".png")
        if os.path.exists(label):
            return image, label
    return image, os.path.join(root, "SegmentationClass", item + ".png")


def _cityscapes_pair(root: str, item: str) -> tuple[str, str]:
    label = item.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    return os.path.join(root, item), os.path.join(root, label)


def read_split(root: str, split_file: str) -> list[str]:
    path = split_file if os.path.isabs(split_file) else os.path.join(root, split_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path!r} does not exist")
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"split file {path!r} lists no images")
    return lines


class SegmentationFolder(Dataset):
    """Items are (image uint8 (3, H, W), label uint8 (H, W)). With ``labels=False`` (unlabeled
    splits) label files are neither needed nor read and every label is ``ignore_index``.

    All listed files are checked when the dataset is built, so a missing file is reported at
    once with its path; a file that cannot be decoded raises :class:`DataError` naming it."""

    def __init__(self, root: str, split_file: str, layout: str = "auto", ignore_index: int = 255, labels: bool = True):
        if layout not in ("voc", "cityscapes", "auto"):
            raise ValueError(f"layout: expected 'voc', 'cityscapes' or 'auto', got {layout!r}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root: dataset folder {root!r} does not exist")
        if layout == "auto":
            layout = "cityscapes" if os.path.isdir(os.path.join(root, "leftImg8bit")) else "voc"
        self.root, self.layout, self.ignore_index, self.labels = root, layout, ignore_index, labels
        self.pairs: list[tuple[str, str]] = []
        for line in read_split(root, split_file):
            parts = line.split()
            if len(parts) >= 2:
                pair = os.path.join(root, parts[0].lstrip("/")), os.path.join(root, parts[1].lstrip("/"))
            elif layout == "voc":
                pair = _voc_pair(root, parts[0])
            else:
                pair = _cityscapes_pair(root, parts[0].lstrip("/"))
            self.pairs.append(pair)
        for image, label in self.pairs:
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image {image!r} listed in {split_file!r} does not exist")
            if labels and not os.path.isfile(label):
                raise FileNotFoundError(f"label {label!r} listed in {split_file!r} does not exist")

    def __len__(self) -> int:
        return len(self.pairs)

    def with_labels(self, indices: list[int]) -> SegmentationFolder:
        """These items with their label files read (an unlabeled split's ground truth, where it has
        one); a missing label file raises FileNotFoundError naming it."""
        missing = [self.pairs[i][1] for i in indices if not os.path.isfile(self.pairs[i][1])]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(indices)} label files are missing, e.g. {missing[0]!r}")
        subset = copy.copy(self)
        subset.pairs, subset.labels = [self.pairs[i] for i in indices], True
        return subset

    def check_labels(self, num_classes: int) -> None:
        """Every label file, before training: single-channel, the size of its image, and only
        classes in [0, num_classes) besides ignore_index; a bad one raises :class:`DataError`
        naming it. Files that passed are remembered (by path, size and modification time) in a
        cache, so a large data set is scanned once."""
        if not self.labels:
            return
        cache = _LabelCheckCache(self.root, num_classes, self.ignore_index)
        for image_path, label_path in self.pairs:
            if cache.passed(label_path):
                continue
            label = self._open(label_path, "label")
            try:
                with Image.open(image_path) as im:
                    size = (im.height, im.width)  # the header only
            except Exception as e:
                raise DataError(f"cannot read {image_path!r}: {e}") from e
            if label.shape != size:
                raise DataError(f"label {label_path!r} is {label.shape} but image {image_path!r} is {size}")
            values = np.unique(label)
            bad = values[(values >= num_classes) & (values != self.ignore_index)]
            if bad.size:
                raise DataError(
                    f"label {label_path!r} holds class {int(bad[0])}, outside [0, {num_classes}) "
                    f"(data.num_classes={num_classes}) and not the ignore value {self.ignore_index}"
                )
            cache.add(label_path)
        cache.save()

    @staticmethod
    def _open(path: str, mode: str) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im.load()
                if mode == "RGB":
                    im = im.convert("RGB")
                elif im.mode not in ("L", "P"):
                    raise DataError(f"label {path!r}: expected a single-channel (L or P) PNG, got mode {im.mode}")
                return np.array(im, dtype=np.uint8)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {path!r}: {e}") from e

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        image = torch.from_numpy(self._open(image_path, "RGB")).permute(2, 0, 1).contiguous()
        if not self.labels:
            return image, torch.full(image.shape[1:], self.ignore_index, dtype=torch.uint8)
        label = torch.from_numpy(self._open(label_path, "label"))
        if label.shape != image.shape[1:]:
            raise DataError(
                f"image {image_path!r} is {tuple(image.shape[1:])} but label {label_path!r} is {tuple(label.shape)}"
            )
        return image, label


class _LabelCheckCache:
    """Label files that passed :meth:`SegmentationFolder.check_labels` with these settings, kept in
    the user's cache folder (a data set's own folder may be read-only); a cache that cannot be
    read or written is simply not used."""

    def __init__(self, root: str, num_classes: int, ignore_index: int):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        digest = hashlib.sha256(f"{os.path.abspath(root)} {num_classes} {ignore_index}".encode()).hexdigest()[:24]
        self.path = os.path.join(base, "semiseg_fast", "label-checks", digest + ".json")
        try:
            with open(self.path) as f:
                self.entries: dict[str, list[int]] = json.load(f)
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    @staticmethod
    def _stamp(path: str) -> list[int]:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]

    def passed(self, path: str) -> bool:
        return self.entries.get(os.path.abspath(path)) == self._stamp(path)

    def add(self, path: str) -> None:
        self.entries[os.path.abspath(path)] = self._stamp(path)
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            with atomic_open(self.path, "w") as f:
                json.dump(self.entries, f)
        except OSError:
            pass  # the next run checks again
