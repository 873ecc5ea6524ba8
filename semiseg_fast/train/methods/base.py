"""What a training method is to the loop: a :class:`Method` subclass in a file of its own, declaring
its config section, the arguments it needs of the built-in model, whether it has a teacher, its
unlabeled data view, any state of its own (kept in checkpoints) and its step. The loop knows no
method by name. Also the helpers most steps share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...losses import OhemCrossEntropy, PseudoLabelCrossEntropy
from ...mixing import mix_pseudo_labels
from ...models import model_outputs
from ...ops import PixelStats, pixel_stats, pseudo_label_cross_entropy
from ..data import LabeledView, RunData
from ..schema import Fail


@dataclass
class StepOutput:
    loss: torch.Tensor
    supervised: torch.Tensor
    unsupervised: torch.Tensor
    mask_ratio: torch.Tensor  # fraction of unlabeled pixels that trained the student (RRN: its selection loss)
    # the loss of the method's own trained modules (Method.state_optimizer): backpropagated with
    # ``loss`` in the same backward, its gradient must reach only those modules' parameters
    state_loss: torch.Tensor | None = None


@dataclass
class StepContext:
    student: nn.Module  # as called for the gradient step (possibly DDP-wrapped)
    teacher: nn.Module | None  # EMA copy, or the bare student for a shared teacher
    semi: dict[str, Any]  # the semi section: settings every semi-supervised method shares
    ignore_index: int
    epoch: int
    generator: torch.Generator  # on the run's device
    num_classes: int
    rampup: float = 1.0  # the unsupervised weight's ramp-up factor at this step (semi.rampup), in [0, 1]
    peer: nn.Module | None = None  # the second network of a two-network method (Method.networks), as called
    # a CPU generator for draws made on the host (mask choices, augmentation parameters); None:
    # ``generator`` is one (on CPU runs the loop passes the same generator for both)
    host_generator: torch.Generator | None = None
    peer_teacher: nn.Module | None = None  # the second network's EMA copy, where the method uses teachers

    @property
    def host_rng(self) -> torch.Generator:
        """The generator of draws made on the host."""
        return self.host_generator if self.host_generator is not None else self.generator

    @property
    def unsupervised_weight(self) -> float:
        """semi.unsupervised_weight at this step: times the ramp-up factor."""
        return self.semi["unsupervised_weight"] * self.rampup


class Method:
    """Subclass, set the class attributes, implement :meth:`step` (and what differs from the
    defaults), and decorate with :func:`semiseg_fast.train.methods.register`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, for --list-methods
    # the dataclass of the method's own keys (semi.<name>.*), or None
    config: ClassVar[type | None] = None
    # trains on unlabeled images (each step gets a batch of unlabeled_view's items)
    uses_unlabeled: ClassVar[bool] = True
    # learns from a teacher: the EMA copy of the model or the model itself (semi.teacher); an
    # instance may set its own from its settings (CPS's targets), before the loop builds the teacher
    uses_teacher: bool = True
    # keys of this method's section that were saved elsewhere before: former dotted key -> key
    renamed: ClassVar[dict[str, str]] = {}
    # 2: two networks teach each other (CPS). The loop builds a second model like the first (the
    # encoder from the same weights, the head drawn after the first's), steps both with one
    # optimizer of the same settings, keeps it in checkpoints, passes it as ``ctx.peer`` and
    # evaluates it and the two networks' averaged prediction beside the first.
    networks: ClassVar[int] = 1

    def __init__(self, config: dict[str, Any], num_classes: int):
        self.run_config, self.num_classes = config, num_classes
        self.supervised_loss = supervised_criterion(config)
        self.fused_upsample = bool(config["train"]["fused_upsample"])

    def upsampling(self, like: torch.Tensor) -> Upsampling:
        """How this run's losses read logits against labels of ``like``'s (H, W) (train.fused_upsample)."""
        return Upsampling(tuple(like.shape[-2:]), self.fused_upsample)

    @property
    def settings(self) -> dict[str, Any]:
        """This method's section of the config (``semi.<name>``)."""
        return self.run_config["semi"][self.name]

    @classmethod
    def check_config(cls, config: dict[str, Any], fail: Fail) -> None:
        """Rules a run of this method adds to the config's own (``fail(key, expected)`` raises)."""

    @classmethod
    def model_kwargs(cls, config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The built-in model's keyword arguments for this method (``kwargs``: model.kwargs).
        By default no representation head: nothing would train it (and DDP would find it unused)."""
        return dict(kwargs, rep_dim=None)

    def state(self) -> nn.Module | None:
        """A module holding the method's own state (a loss with a memory bank, say): moved to the
        run's device, saved in checkpoints and restored on resume."""
        return None

    def state_optimizer(self, state: nn.Module) -> torch.optim.Optimizer | None:
        """An optimizer of :meth:`state`'s own trained parameters (RRN's discriminators), given
        the state as moved to the run's device. The loop steps it after each step's backward of
        ``loss + state_loss`` (its gradients averaged over processes) and keeps it in checkpoints.
        None: the state is not trained by gradients."""
        return None

    def labeled_view(self, data: RunData) -> Dataset:
        """The dataset of labeled items a step receives: (image, label) crops."""
        return LabeledView(data.labeled, self.run_config["data"])

    def unlabeled_view(self, data: RunData) -> Dataset | None:
        """The dataset of unlabeled items a step receives (see train/data.py's views)."""
        return None

    def step(self, ctx: StepContext, labeled: list[torch.Tensor], unlabeled: list[torch.Tensor] | None) -> StepOutput:
        raise NotImplementedError

    def pseudo_labels(
        self, teacher: nn.Module, images: torch.Tensor, indices: Sequence[int], epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pseudo-labels this method would train on for whole, unaugmented unlabeled images,
        to measure them against the ground truth: (labels (N, H, W) before the method's filter,
        keep (N, H, W) bool, the pixels its filter keeps at ``epoch``), from the same functions
        as :meth:`step`. ``images``: normalised, ``indices``: their places in the unlabeled split;
        ``teacher`` is in eval mode, called without gradients under the run's autocast. None: the
        method has no pseudo-labels."""
        return None


def supervised_criterion(config: dict[str, Any]) -> nn.Module:
    """The labeled images' loss (train.supervised_loss): cross-entropy, or OHEM with train.ohem's settings."""
    train, ignore_index = config["train"], config["data"]["ignore_index"]
    if train["supervised_loss"] == "ohem":
        return OhemCrossEntropy(train["ohem"]["threshold"], train["ohem"]["min_kept"], ignore_index)
    return PseudoLabelCrossEntropy(ignore_index=ignore_index)


def resized(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear with align_corners=True, as UniMatch and U2PL upsample logits before their losses."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def upsampled(output: Any, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits at ``size`` (:func:`resized`), logits as the model gave them, representation or None)."""
    logits, rep = model_outputs(output)
    return resized(logits, size), logits, rep


@dataclass(frozen=True)
class Upsampling:
    """How a step's losses read the decoder's logits against labels of (H, W) ``size``.

    ``fused`` (train.fused_upsample): the logits stay at the decoder's resolution and the fused
    losses and :func:`pixel_stats` take ``size`` and ``align_corners=True`` (:attr:`kwargs`): they
    read the logits through bilinear taps, so the upsampled logits and their gradient never exist.
    Otherwise the logits are upsampled first by :func:`resized` and the losses get no size. Both
    compute the same values (to float rounding); per-pixel maps (labels, confidence, masks) are at
    ``size`` either way. Call it on the logits, pass ``**kwargs`` to the losses::

        up = self.upsampling(labels)
        loss = self.supervised_loss(up(logits), labels, **up.kwargs)
    """

    size: tuple[int, int]
    fused: bool

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the losses take them: as they are when fused, else upsampled to ``size``."""
        return logits if self.fused else resized(logits, self.size)

    def full(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits at ``size`` whatever the setting: :meth:`__call__`'s output, upsampled when fused."""
        return resized(logits, self.size) if self.fused else logits

    @property
    def kwargs(self) -> dict[str, Any]:
        """The losses' ``size`` and ``align_corners`` when fused; none otherwise."""
        return {"size": self.size, "align_corners": True} if self.fused else {}

    def stats(self, logits: torch.Tensor) -> PixelStats:
        """:func:`pixel_stats` of ``logits`` (as the model gave them) at ``size``."""
        return pixel_stats(self(logits), **self.kwargs)


def predict(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return upsampled(model(images), images.shape[-2:])


def eval_outputs(model: nn.Module, images: torch.Tensor) -> Any:
    """``model``'s raw outputs, in eval mode and without gradients."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(images)
        model.train(was_training)
    return out


def teacher_outputs(ctx: StepContext, images: torch.Tensor) -> Any:
    """The teacher's raw outputs, in eval mode and without gradients."""
    return eval_outputs(ctx.teacher, images)


def teacher_predict(ctx: StepContext, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return upsampled(teacher_outputs(ctx, images), images.shape[-2:])


def mix(box: torch.Tensor, t: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """CutMix within the batch: inside image i's box, take image i - ``shift`` (cyclically)."""
    b = box[:, None] if t.dim() == 4 else box
    return torch.where(b, t.roll(shift, dims=0), t)


def mixed_pseudo_labels(
    box: torch.Tensor, teacher_logits: torch.Tensor, size: tuple[int, int] | None = None, align_corners: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, confidence) of the CutMixed images from one fused pass over the teacher's logits:
    outside the box image i's own, inside it image i - 1's. With ``size``, the logits are read
    upsampled to ``size`` (pixel_stats's ``size``, ``align_corners``), the box's (H, W)."""
    stats = pixel_stats(teacher_logits, size=size, align_corners=align_corners)
    label, conf = stats.label, stats.confidence
    return mix_pseudo_labels(label, conf, label.roll(1, dims=0), conf.roll(1, dims=0), ~box)


def confident_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    ignored: torch.Tensor,
    threshold: float,
    ignore_index: int,
    size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UniMatch's loss_u: cross-entropy against ``labels`` on the pixels not ``ignored`` whose
    ``confidence`` reaches ``threshold``, over the count of pixels not ignored; and the share of
    those pixels that trained. With ``size``, the loss of the logits upsampled to ``size`` (the
    maps' (H, W)), computed by the fused cross-entropy without the upsampled tensor."""
    valid = ~ignored
    confident = valid & (confidence >= threshold)
    target = labels.masked_fill(~confident, ignore_index)
    num_valid = valid.sum()
    loss = pseudo_label_cross_entropy(
        logits, target, ignore_index=ignore_index, normalizer=num_valid, size=size, align_corners=align_corners
    )
    return loss, confident.sum() / num_valid.clamp(min=1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, over parameters and float buffers
    (BatchNorm statistics); integer buffers are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.is_floating_point():
            t.lerp_(s, 1.0 - decay)
        else:
            t.copy_(s)
