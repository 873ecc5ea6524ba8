"""The pseudo-label store: the folder ``python -m semiseg_fast.pseudo_label`` writes and
self-training reads. Per image ``ID``: ``labels/ID.png`` (uint8), ``confidence/ID.png`` (uint8,
round(255 p)), with top-k ``topk/ID.npz``; ``settings.json`` and ``manifest.json`` beside them.
Every file is written to a temporary name and renamed."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from ..utils.atomic import atomic_open, remove_temporaries
from .folders import SegmentationFolder
from .scene_splits import scene_id
from .subset import Subset

MANIFEST = "manifest.json"
SETTINGS = "settings.json"
FORMAT = 1


def item_ids(dataset) -> list[str]:
    """A stable file name per image of a split: the image path (for folders) or the synthetic pool index."""
    if isinstance(dataset, Subset) and not isinstance(dataset.base, SegmentationFolder):
        return [scene_id(i) for i in dataset.indices]
    if isinstance(dataset, SegmentationFolder):
        out = []
        for image_path, _ in dataset.pairs:
            rel = os.path.splitext(os.path.relpath(image_path, dataset.root))[0]
            out.append(rel.replace(os.sep, "__"))
        return out
    return [f"item{i:06d}" for i in range(len(dataset))]


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_file(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def label_paths(out_dir: str, item_id: str, topk: int) -> dict[str, str]:
    p = {
        "label": os.path.join(out_dir, "labels", item_id + ".png"),
        "confidence": os.path.join(out_dir, "confidence", item_id + ".png"),
    }
    if topk:
        p["topk"] = os.path.join(out_dir, "topk", item_id + ".npz")
    return p


def remove_stale_temporaries(out_dir: str) -> None:
    for sub in ("labels", "confidence", "topk", ""):
        remove_temporaries(os.path.join(out_dir, sub))


class PseudoLabels:
    """Reads a folder written by :func:`generate`: ``load(index)`` gives (label uint8 (H, W),
    confidence float32 (H, W), top-k (classes uint8 (K, H, W), probabilities float32) or None)."""

    def __init__(self, folder: str):
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pseudo_dir: {folder!r} has no {MANIFEST} (run python -m semiseg_fast.pseudo_label)"
            )
        try:
            with open(path) as f:
                self.manifest = json.load(f)
            if self.manifest.get("format") != FORMAT:
                raise ValueError(f"has format {self.manifest.get('format')!r}, expected {FORMAT}")
            self.topk = int(self.manifest["topk"])
            self.ids = {int(it["index"]): str(it["id"]) for it in self.manifest["items"]}
            int(self.manifest["split_size"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"pseudo_dir: {path!r} is not a pseudo-label manifest: {e}") from e
        self.folder = folder

    @property
    def indices(self) -> list[int]:
        return sorted(self.ids)

    def load(self, index: int):
        paths = label_paths(self.folder, self.ids[index], self.topk)
        label = torch.from_numpy(SegmentationFolder._open(paths["label"], "label"))
        conf = torch.from_numpy(SegmentationFolder._open(paths["confidence"], "label")).float() / 255.0
        top = None
        if self.topk:
            with np.load(paths["topk"]) as z:
                top = torch.from_numpy(z["classes"]), torch.from_numpy(z["probs"].astype(np.float32))
        return label, conf, top
