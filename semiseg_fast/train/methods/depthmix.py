"""DepthMix (Hoyer et al. 2021): ClassMix's training (``classmix.py``) with a geometry-aware mask.
A frozen self-supervised depth network (a ``python -m semiseg_fast.depth`` run) gives each crop's
disparity online; the mix of crop i and crop i + 1 keeps crop i's pixel where it is at least as
near as crop i + 1's, up to a margin, after min-max normalising each crop's disparity, so a far
object is never pasted over a near one. Padding never wins over an image pixel.

``semi.depthmix.level=class`` first gives each class the teacher predicts in a crop the mean
disparity of its pixels (our variant, not the paper's): the masks then follow the teacher's class
outlines rather than the depth network's soft edges, nearer classes on top.

``semi.depthmix.disparity=truth`` mixes by the embedded world's true disparity instead (cropped with
each image): what a perfect depth network would give, to tell DepthMix's idea from the depth run's
quality."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...data.clips import true_disparity
from ...data.subset import Subset
from ...depth.networks import frozen_depth_network
from ...depth.objective import depth_task_loss
from ...mixing import class_means, depthmix_masks
from ...models.build import BUILT_IN_MODEL
from ...models.pretrained import DEPTH_PREFIX, DEPTH_WEIGHTS
from ..data import LabeledView, RunData, WeakView
from ..schema import NON_NEGATIVE_NUMBER, OPTIONAL_FOLDER, Fail, choice, option, optional
from .base import StepContext
from .classmix import ClassMix, ClassMixConfig
from .registry import register

DEFAULT_DEPTH_WEIGHT = 0.1


@dataclass
class DepthMixConfig(ClassMixConfig):
    depth_run: str | None = option(
        None,
        "a python -m semiseg_fast.depth run folder whose frozen depth network gives each crop's disparity; "
        "null: the run model.pretrained=depth:RUN_DIR names",
        OPTIONAL_FOLDER,
        path=True,
    )
    margin: float = option(
        0.03,
        "a crop's pixel is kept where its normalised disparity is at least the other's minus this",
        NON_NEGATIVE_NUMBER,
    )
    level: str = option(
        "class",
        "class (each class the teacher predicts in a crop at its mean disparity: the masks follow the predicted "
        "class outlines, nearer classes on top) | pixel (each pixel's disparity, as Hoyer et al.)",
        choice("pixel", "class"),
    )
    depth_weight: float | None = option(
        None,
        "weight of the depth task (Hoyer et al.'s multi-task variant): a depth head on the decoder's features "
        "learns the depth network's log depth, L1, on the labeled crops and the mixes (the sources' disparities "
        "mixed by the same mask); 0: none; null: 0.1 with disparity=network and the built-in model, else 0. "
        "Above 0 only with disparity=network and the built-in model",
        optional(NON_NEGATIVE_NUMBER, "a number >= 0"),
    )
    disparity: str = option(
        "network",
        "network (the depth run's, on each crop) | truth (the embedded world's true disparity: a perfect depth "
        "network's, for comparison; data.name=synthetic only)",
        choice("network", "truth"),
    )


class TrueDisparity:
    """The true disparity of each image of a subset of the embedded pool, rendered once."""

    def __init__(self, subset: Subset):
        self.subset, self.maps = subset, {}

    def __call__(self, index: int) -> torch.Tensor:
        if index not in self.maps:
            pool = self.subset.base
            self.maps[index] = torch.from_numpy(true_disparity(pool.seed, self.subset.indices[index], pool.image_size))
        return self.maps[index]


def depth_weight(config: dict[str, Any]) -> float:
    """semi.depthmix.depth_weight, null resolved: 0.1 where the depth task can train, else 0."""
    settings = config["semi"]["depthmix"]
    if settings["depth_weight"] is not None:
        return settings["depth_weight"]
    can_train = settings["disparity"] == "network" and config["model"]["name"] == BUILT_IN_MODEL
    return DEFAULT_DEPTH_WEIGHT if can_train else 0.0


def depth_run(config: dict[str, Any], method: str) -> str | None:
    """semi.<method>.depth_run, or the depth run model.pretrained starts from, or None."""
    run = config["semi"][method]["depth_run"]
    pretrained = config["model"]["pretrained"]
    if run is None and isinstance(pretrained, str) and pretrained.startswith(DEPTH_PREFIX):
        run = pretrained[len(DEPTH_PREFIX) :]
    return run


def check_depth_run(config: dict[str, Any], method: str, fail: Fail) -> None:
    """Refuse, naming semi.<method>.depth_run, a missing or unfinished depth run."""
    run, key = depth_run(config, method), f"semi.{method}.depth_run"
    if run is None:
        fail(key, "a depth run's folder (python -m semiseg_fast.depth), or model.pretrained=depth:RUN_DIR")
    elif not os.path.isfile(os.path.join(run, DEPTH_WEIGHTS)):
        fail(key, f"a finished depth run's folder (no {DEPTH_WEIGHTS} in {run!r})")


def depth_network(config: dict[str, Any], method: str) -> nn.Module:
    """The frozen depth network of semi.<method>.depth_run (or of model.pretrained's depth run)."""
    return frozen_depth_network(depth_run(config, method), f"semi.{method}.depth_run")


def disparity_of(depth: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, H, W): a frozen depth network's disparity of each crop, in fp32 whatever the step's
    autocast (a half-precision disparity is coarse beside the mask's margin)."""
    depth.eval()
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        return depth(images.float())[0][:, 0]


def nearer_masks(
    disparity: torch.Tensor,
    labels: torch.Tensor,
    pad: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    margin: float,
    level: str = "class",
) -> torch.Tensor:
    """DepthMix's masks: bool (N, H, W), True where the mix of crop i and crop i + 1 keeps crop i,
    its pixel (``level=pixel``) or the class ``labels`` give it (``level=class``, at the class's mean
    disparity in the crop) being at least as near, up to ``margin``. ``pad`` (True on padding):
    padding counts as the crop's farthest, so it never covers the other crop's image, and is never kept."""
    if level == "class":
        disparity = class_means(disparity, labels, num_classes, ignore_index, check=False)
    farthest = disparity.masked_fill(pad, float("inf")).amin(dim=(1, 2), keepdim=True)
    disparity = torch.where(pad, farthest.expand_as(disparity), disparity)
    return depthmix_masks(disparity, disparity.roll(-1, dims=0), margin) & ~pad


@register
class DepthMix(ClassMix):
    name = "depthmix"
    description = "DACS mean teacher: crops mixed by a depth run's disparity, nearer pixels on top"
    config = DepthMixConfig

    def __init__(self, config: dict[str, Any], num_classes: int):
        super().__init__(config, num_classes)
        online = self.settings["disparity"] == "network"
        self.depth = depth_network(config, self.name) if online else None
        self.disparity = None  # the step's crops', from the network: the depth task's targets

    @classmethod
    def check_config(cls, config: dict[str, Any], fail: Fail) -> None:
        super().check_config(config, fail)
        settings = config["semi"]["depthmix"]
        if settings["disparity"] == "truth":
            if config["data"]["name"] != "synthetic":
                fail("semi.depthmix.disparity", "network (truth: the embedded data set's only)")
        else:
            check_depth_run(config, cls.name, fail)
        if depth_weight(config) > 0:
            if settings["disparity"] != "network":
                fail("semi.depthmix.depth_weight", "0 with disparity=truth (the task learns the depth network's)")
            if config["model"]["name"] != BUILT_IN_MODEL:
                fail("semi.depthmix.depth_weight", "0 with a model of your own (the depth head is the built-in's)")

    @classmethod
    def model_kwargs(cls, config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        depth = depth_weight(config) > 0
        return dict(super().model_kwargs(config, kwargs), **({"depth_head": True} if depth else {}))

    def state(self) -> nn.Module | None:
        return self.depth  # moved to the run's device with the model, kept in checkpoints

    def _true_disparity(self, subset: Subset) -> TrueDisparity | None:
        return TrueDisparity(subset) if self.settings["disparity"] == "truth" else None

    def labeled_view(self, data: RunData) -> LabeledView:
        maps = self._true_disparity(data.labeled) if self.settings["mix_labeled"] else None
        return LabeledView(data.labeled, self.run_config["data"], maps)

    def unlabeled_view(self, data: RunData) -> WeakView:
        return WeakView(data.unlabeled, self.run_config["data"], self._true_disparity(data.unlabeled))

    def mix_masks(
        self, ctx: StepContext, images: torch.Tensor, labels: torch.Tensor, pad: torch.Tensor, *maps: torch.Tensor
    ) -> torch.Tensor:
        if maps:
            (disparity,) = maps
        else:
            disparity = self.crop_disparity(images)
            self.disparity = disparity
        s = self.settings
        return nearer_masks(disparity, labels, pad, self.num_classes, ctx.ignore_index, s["margin"], s["level"])

    def crop_disparity(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W): the frozen depth network's disparity of each crop."""
        return disparity_of(self.depth, images)

    def depth_task(self, ctx, output, images_l, labels_l, mask, valid):
        weight = depth_weight(self.run_config)
        if weight == 0:
            return None
        valid_l = labels_l != ctx.ignore_index
        disparity = self.disparity  # of the mixed crops, the labeled ones last with mix_labeled
        n_l = images_l.shape[0]
        labeled = disparity[-n_l:] if self.settings["mix_labeled"] else self.crop_disparity(images_l)
        target = torch.cat([labeled, torch.where(mask, disparity, disparity.roll(-1, dims=0))])
        loss = depth_task_loss(output["disparity"], target[:, None], torch.cat([valid_l, valid]))
        return weight * loss
