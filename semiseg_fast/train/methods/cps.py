"""CPS (cross pseudo-supervision): two networks of one architecture, differently initialised,
each learning from the other's pseudo-labels on mixed unlabeled images, both from the labels.

CPS's code mixes by CutMix boxes (``semi.cps.mask=box``) and jitters no colour. By default the
mixes here follow the classes network 1 predicts in each crop: ``class`` pastes half of them
(ClassMix), ``depth`` pastes the classes that a depth run's frozen network puts nearer, each at its
mean disparity in the crop (DepthMix's ``level=class``); and the mixes get the strong view's colour
jitter and blur (``semi.strong_color``). Each network's pseudo-labels for a mix are mixed from its
one-pass statistics on the two sources, whatever the mask. CPS's code takes them from the network
itself in training mode (``targets=networks``); by default they come from an EMA copy of it in eval
mode (``targets=ema``: a mean teacher per network, what evaluation then reports). With the depth
masks two more things are on by default: the labeled crops join the mixes with their ground truth
(``mix_labeled``: Hoyer et al.'s code mixes them; DepthMix's option, off there), and each network
learns the depth run's depth (``depth_weight``: DepthMix's depth task, on there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...data.transforms import jitter_and_blur
from ...depth.objective import depth_task_loss
from ...mixing import classmix_masks, cps_box_masks
from ...models import model_outputs
from ...models.build import BUILT_IN_MODEL
from ...ops import cps_loss
from ..data import LabeledView, RunData, WeakView
from ..schema import (
    BOOLEAN,
    NON_NEGATIVE_NUMBER,
    OPTIONAL_FOLDER,
    UNIT_INTERVAL,
    Fail,
    Section,
    choice,
    option,
    optional,
)
from .base import Method, StepContext, StepOutput, Upsampling, eval_outputs, mix
from .depthmix import (
    DEFAULT_DEPTH_WEIGHT,
    DepthMixConfig,
    check_depth_run,
    depth_network,
    depth_run,
    disparity_of,
    nearer_masks,
)
from .registry import register

DEPTH_MARGIN = DepthMixConfig.margin  # the depth masks' margin: DepthMix's default


@dataclass
class CPSConfig(Section):
    threshold: float = option(
        0.0, "peer confidence a pseudo-label needs, in [0, 1]; 0 (CPS) trains on every pixel", UNIT_INTERVAL
    )
    mask: str | None = option(
        None,
        "how two unlabeled crops mix: depth (the classes network 1 predicts, nearer ones on top, by a depth run's "
        "disparity: DepthMix's level=class) | class (half the classes network 1 predicts: ClassMix) | box (CPS's "
        "three CutMix boxes); null: depth where a depth run is given (depth_run, or model.pretrained=depth:RUN_DIR), "
        "else class",
        optional(choice("depth", "class", "box"), "depth | class | box | null"),
    )
    depth_run: str | None = option(
        None,
        "with mask=depth, a python -m semiseg_fast.depth run folder whose frozen network gives each crop's "
        "disparity; null: the run model.pretrained=depth:RUN_DIR names",
        OPTIONAL_FOLDER,
        path=True,
    )
    targets: str = option(
        "ema",
        "what labels the sources for the peer: networks (CPS: each network itself, in training mode) | ema (an EMA "
        "copy of each network, semi.ema_decay, in eval mode: a mean teacher per network; the copies are what "
        "evaluation reports)",
        choice("networks", "ema"),
    )
    strong_color: bool | None = option(
        None,
        "colour jitter, grayscale and blur on the mixes (CPS's code has none); null: semi.strong_color",
        optional(BOOLEAN, "true | false | null"),
    )
    mix_labeled: bool | None = option(
        None,
        "the step's labeled crops join the mixing with their ground truth as both networks' labels (confidence "
        "1), as semi.classmix.mix_labeled: data.unlabeled_batch_size + data.batch_size mixes; not with mask=box; "
        "null: true with mask=depth, else false",
        optional(BOOLEAN, "true | false | null"),
    )
    depth_weight: float | None = option(
        None,
        "weight of the depth task (as semi.depthmix.depth_weight): each network's depth head learns the depth "
        "run's log depth, L1, on the labeled crops and the mixes (the sources' disparities mixed by the same "
        f"mask); 0: none; null: {DEFAULT_DEPTH_WEIGHT} with mask=depth and the built-in model, else 0. Above 0 "
        "only with a depth run and the built-in model",
        optional(NON_NEGATIVE_NUMBER, "a number >= 0"),
    )


@dataclass
class CPSPass:
    """What a CPS step computes, for methods that build on it (RRN)."""

    supervised: torch.Tensor  # both networks' supervised losses, summed
    cps: torch.Tensor  # the cross pseudo-supervision loss
    depth: torch.Tensor | float  # both networks' depth-task losses, weighted (0.0 without the task)
    mask_ratio: torch.Tensor
    mixed: torch.Tensor  # the mixes (of the labeled crops too with mix_labeled), colour-jittered with strong_color
    ignored: torch.Tensor  # their padding (True = ignore)
    logits: list[torch.Tensor]  # each network's logits on them, as the losses take them (Upsampling)
    up: Upsampling


def mask_kind(config: dict[str, Any], method: str) -> str:
    """semi.<method>.mask, null resolved: depth where a depth run is given, else class."""
    kind = config["semi"][method]["mask"]
    if kind is None:
        kind = "class" if depth_run(config, method) is None else "depth"
    return kind


def mixes_labeled(config: dict[str, Any], method: str) -> bool:
    """semi.<method>.mix_labeled, null resolved: true with the depth masks (where it was measured), else false."""
    given = config["semi"][method]["mix_labeled"]
    return mask_kind(config, method) == "depth" if given is None else given


def depth_weight(config: dict[str, Any], method: str) -> float:
    """semi.<method>.depth_weight, null resolved: DepthMix's default where the depth masks' network
    is loaded anyway and the model has a depth head to learn with, else 0."""
    weight = config["semi"][method]["depth_weight"]
    if weight is None:
        can_train = mask_kind(config, method) == "depth" and config["model"]["name"] == BUILT_IN_MODEL
        weight = DEFAULT_DEPTH_WEIGHT if can_train else 0.0
    return weight


class CPSView(LabeledView):
    """Weakly augmented unlabeled crops, their padding masks (True = ignore) and CPS's box masks
    (three in-bounds boxes, XOR; True inside: the pixels that come from the batch's previous image):
    the view of mask=box (the other masks take :class:`WeakView`'s crops, the same crops)."""

    def __getitem__(self, item: tuple[int, ...]):
        weak, pad, g = self._weak(item, keep_label=False)
        box = cps_box_masks(1, weak.shape[1], weak.shape[2], g)[0]
        return weak, pad == self.cfg["ignore_index"], box


@register
class CPS(Method):
    name = "cps"
    description = "CPS: two networks, each trained on the other's pseudo-labels of CutMixed images"
    config = CPSConfig
    uses_teacher = False  # with targets=ema: each network's EMA copy (the loop's teacher and peer teacher)
    networks = 2

    def __init__(self, config: dict[str, Any], num_classes: int):
        super().__init__(config, num_classes)
        self.mask = mask_kind(config, self.name)
        self.depth_weight = depth_weight(config, self.name)
        self.mix_labeled = mixes_labeled(config, self.name)
        needs_depth = self.mask == "depth" or self.depth_weight > 0
        self.depth = depth_network(config, self.name) if needs_depth else None  # frozen, not in checkpoints
        color = self.settings["strong_color"]
        self.strong_color = config["semi"]["strong_color"] if color is None else color
        self.uses_teacher = self.settings["targets"] == "ema"

    @classmethod
    def check_config(cls, config: dict[str, Any], fail: Fail) -> None:
        name = cls.name
        mask, labeled, weight = mask_kind(config, name), mixes_labeled(config, name), depth_weight(config, name)
        if config["data"]["unlabeled_batch_size"] < 2 and not labeled:
            fail("data.unlabeled_batch_size", f"at least 2 (mixing pairs crops), or semi.{name}.mix_labeled=true")
        if config["semi"][name]["targets"] == "ema" and config["semi"]["teacher"] != "ema":
            fail(f"semi.{name}.targets", "networks with semi.teacher=shared (ema makes EMA teachers)")
        if mask == "depth" or weight > 0:
            check_depth_run(config, name, fail)
        if labeled and mask == "box":
            fail(f"semi.{name}.mix_labeled", "false with mask=box (the boxes are the unlabeled crops')")
        if weight > 0 and config["model"]["name"] != BUILT_IN_MODEL:
            fail(f"semi.{name}.depth_weight", "0 with a model of your own (the depth head is the built-in's)")

    @classmethod
    def model_kwargs(cls, config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        depth = depth_weight(config, cls.name) > 0
        return dict(super().model_kwargs(config, kwargs), **({"depth_head": True} if depth else {}))

    def unlabeled_view(self, data: RunData) -> LabeledView:
        view = CPSView if self.mask == "box" else WeakView
        return view(data.unlabeled, self.run_config["data"])

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        p = self.cps_pass(ctx, labeled, unlabeled)
        loss = p.supervised + ctx.unsupervised_weight * p.cps + p.depth
        return StepOutput(loss, p.supervised.detach(), p.cps.detach(), p.mask_ratio)

    def pseudo_labels(self, teacher, images, indices, epoch):
        """Network 1's argmax, kept where its confidence reaches the threshold (every pixel at 0)."""
        stats = self.upsampling(images).stats(model_outputs(teacher(images))[0])
        return stats.label, stats.confidence >= self.settings["threshold"]

    def cps_pass(self, ctx: StepContext, labeled, unlabeled) -> CPSPass:
        images_l, labels_l = labeled
        images_u, pad, *box = unlabeled  # box: CPSView's, with mask=box
        networks = (ctx.student, ctx.peer)
        up = self.upsampling(images_u)
        # Each network's pseudo-labels for the mixed images, mixed from its passes on the two sources
        # (in training mode, without gradients, as CPS's code makes them; or its EMA copy's, in eval mode).
        with torch.no_grad():
            if self.uses_teacher:
                on_sources = [model_outputs(eval_outputs(t, images_u))[0] for t in (ctx.teacher, ctx.peer_teacher)]
            else:
                on_sources = [model_outputs(net(images_u))[0] for net in networks]
        sources = [(s.label, s.confidence) for s in map(up.stats, on_sources)]  # each labeller's, per crop
        images, pads = images_u, pad
        if self.mix_labeled:  # the labeled crops join in, their ground truth at confidence 1
            ignored_l = labels_l == ctx.ignore_index
            images, pads = torch.cat([images_u, images_l]), torch.cat([pad, ignored_l])
            sources = [
                (torch.cat([label, labels_l.to(label.dtype)]), torch.cat([conf, (~ignored_l).to(conf.dtype)]))
                for label, conf in sources
            ]
        disparity = self.disparity(images) if self.depth is not None else None
        if self.mask == "box":
            box = box[0]
        else:
            box = self.class_masks(ctx, pads, sources[0][0], disparity)
        targets = [(mix(box, label), mix(box, conf)) for label, conf in sources]
        mixed, ignored = mix(box, images), mix(box, pads)
        if self.strong_color:
            mixed = jitter_and_blur(mixed, ctx.host_rng)
        if self.depth_weight > 0:  # the depth task's targets: the labeled crops' and the mixes' disparity
            labeled_disparity = disparity[len(images_u) :] if self.mix_labeled else self.disparity(images_l)
            depth_target = torch.cat([labeled_disparity, mix(box, disparity)])[:, None]
            depth_valid = torch.cat([labels_l != ctx.ignore_index, ~ignored])
        sup, depth, logits_u = 0.0, 0.0, []
        for net in networks:
            output = net(torch.cat([images_l, mixed]))
            logits_l, mixed_logits = model_outputs(output)[0].split([images_l.shape[0], mixed.shape[0]])
            sup = sup + self.supervised_loss(up(logits_l), labels_l, **up.kwargs)
            logits_u.append(up(mixed_logits))
            if self.depth_weight > 0:
                task = depth_task_loss(output["disparity"], depth_target, depth_valid)
                depth = depth + self.depth_weight * task
        unsup, ratio = cps_loss(
            *logits_u,
            ignore_mask=ignored,
            threshold=self.settings["threshold"],
            ignore_index=ctx.ignore_index,
            targets_a=targets[0],
            targets_b=targets[1],
            return_mask_ratio=True,
            **up.kwargs,
        )
        return CPSPass(sup, unsup, depth, ratio, mixed, ignored, logits_u, up)

    def disparity(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W): the frozen depth network's disparity of each crop."""
        return disparity_of(self.depth.to(images.device), images)

    def class_masks(
        self, ctx: StepContext, pad: torch.Tensor, labels: torch.Tensor, disparity: torch.Tensor | None
    ) -> torch.Tensor:
        """The ``class`` or ``depth`` masks of the crops (network 1's ``labels``; ``disparity``: the
        crops', for ``depth``), as :func:`mix` takes them: True where mixed image i takes image i - 1."""
        labels = labels.masked_fill(pad, ctx.ignore_index)
        if self.mask == "class":
            keep = classmix_masks(labels, ctx.host_rng, ctx.ignore_index)
        else:
            keep = nearer_masks(disparity, labels, pad, self.num_classes, ctx.ignore_index, DEPTH_MARGIN)
        return keep.roll(1, dims=0)  # keep[i] puts crop i over crop i + 1: mix() makes that mix i + 1
