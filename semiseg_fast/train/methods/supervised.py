"""Supervised training on the labeled images alone: the baseline every method is judged against.
With ``semi.supervised.depth_run`` it is Hoyer et al.'s multi-task variant: a depth head on the
decoder's features learns the frozen depth network's prediction beside the segmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...depth.networks import frozen_depth_network
from ...depth.objective import depth_task_loss
from ...models.build import BUILT_IN_MODEL
from ...models.pretrained import DEPTH_WEIGHTS
from ..schema import NON_NEGATIVE_NUMBER, OPTIONAL_FOLDER, Fail, Section, option
from .base import Method, StepContext, StepOutput
from .registry import register


@dataclass
class SupervisedConfig(Section):
    depth_run: str | None = option(
        None,
        "a python -m semiseg_fast.depth run folder: adds the depth task (a depth head on the decoder's features "
        "learns the run's frozen depth network's log depth, L1, on the labeled crops); null: segmentation alone",
        OPTIONAL_FOLDER,
        path=True,
    )
    depth_weight: float = option(0.1, "weight of the depth task's loss (with depth_run)", NON_NEGATIVE_NUMBER)


@register
class Supervised(Method):
    name = "supervised"
    description = "labeled images only: cross-entropy, no teacher (the baseline); optionally a depth task"
    config = SupervisedConfig
    uses_unlabeled = False
    uses_teacher = False

    def __init__(self, config: dict[str, Any], num_classes: int):
        super().__init__(config, num_classes)
        run = self.settings["depth_run"]
        self.depth_teacher = frozen_depth_network(run, "semi.supervised.depth_run") if run else None

    @classmethod
    def check_config(cls, config: dict[str, Any], fail: Fail) -> None:
        run = config["semi"]["supervised"]["depth_run"]
        if run is not None:
            if not os.path.isfile(os.path.join(run, DEPTH_WEIGHTS)):
                fail("semi.supervised.depth_run", f"a finished depth run's folder (no {DEPTH_WEIGHTS} in {run!r})")
            if config["model"]["name"] != BUILT_IN_MODEL:
                fail("semi.supervised.depth_run", "null with a model of your own (the depth head is the built-in's)")

    @classmethod
    def model_kwargs(cls, config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        depth = config["semi"]["supervised"]["depth_run"] is not None
        return dict(kwargs, rep_dim=None, **({"depth_head": True} if depth else {}))

    def state(self) -> nn.Module | None:
        return self.depth_teacher  # moved to the run's device with the model

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        images, labels = labeled
        up = self.upsampling(labels)
        output = ctx.student(images)
        logits = up(output["pred"] if isinstance(output, dict) else output)
        supervised = self.supervised_loss(logits, labels, **up.kwargs)
        loss = supervised
        if self.depth_teacher is not None:
            self.depth_teacher.eval()
            with torch.no_grad():
                target = self.depth_teacher(images)[0]
            depth = depth_task_loss(output["disparity"], target, labels != ctx.ignore_index)
            loss = loss + self.settings["depth_weight"] * depth
        zero = torch.zeros((), device=loss.device)
        return StepOutput(loss, supervised.detach(), zero, zero)
