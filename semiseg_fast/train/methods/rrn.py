"""RRN (Chen et al. 2023): CPS plus, per network, a discriminator that judges its predictions
region by region; the regions it accepts train the network on its own pseudo-labels (local
selection), weighted by whether the peer's discriminator accepts them too (dynamic region-loss
correction).

The formulas, for network b with logits z_b on the CutMixed images x (p_b = softmax(z_b) at the
images' size, zero on padding; ŷ_b = argmax z_b) and discriminator D_b, whose score s = sigmoid(D)
has one value per cell of a grid (semi.rrn.cell pixels a side; 0: one cell, the whole image, as
RRN's released code scores whole images):

- D input: [p, image min-max normalised to [0, 1]]; real = [one-hot of the labels (zero where
  ignored), labeled image], fake = [p_b, x].
- L_D,b = (BCE(D_b(real), 1) + BCE(D_b(fake_b.detach()), 0)) / 2, mean over images and cells,
  trained by its own Adam (semi.rrn.disc_lr, betas (0.9, 0.99), as the code's).
- L_fm,b = mean over features |E f_b(real) - E f_b(fake_b)|, f_b the cell-pooled last feature map
  of D_b, E the mean over images and cells; the gradient reaches network b only.
- Selection, from epoch semi.rrn.selection_start_epoch (the code's: after the first): a cell is
  accepted by a discriminator whose score there exceeds semi.rrn.selection_threshold (0.6).
  Without correction the cell weight is w = [D_b accepts]; with it, w = agree_weight where D_b and
  the peer's D accept it, disagree_weight where one of them does, 0 where neither. The code adds one
  CE term per discriminator, so a cell both accept counts twice and a cell one accepts once: the
  defaults keep that 2:1 ratio at one term's scale (1 and 0.5), so that correction on and off
  compare at the same loss scale.
- L_st,b = sum over pixels of w * CE(z_b, ŷ_b) / (pixels with w > 0), through the fused
  cross-entropy's per-pixel weight; 0 while nothing is selected (the dynamic switch: the term
  exists only when the selection is non-empty).
- L = CE_sup,1 + CE_sup,2 + λ (L_cps + selection_weight Σ_b L_st,b) + feature_matching_weight
  Σ_b L_fm,b (+ CPS's depth task, semi.rrn.depth_weight), λ = semi.unsupervised_weight with its
  ramp-up; Σ_b L_D,b trains the discriminators.

With semi.rrn.mix_labeled the mixes hold labeled pixels too: there CPS's term learns the ground
truth, while the discriminators judge them and the selection trains on them like any other pixel.

Cells and features: D_b's last map has a stride of 16 pixels; a cell's features are that map
average-pooled over the cell's share of it (adaptive pooling to the grid, so neighbouring cells of
a map that does not split evenly share a row or column). One cell is s4GAN's global pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...models import model_outputs
from ...ops import pixel_stats, pseudo_label_cross_entropy
from ..schema import (
    BOOLEAN,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    number_in,
    option,
)
from .base import StepContext, StepOutput, resized
from .cps import CPS, CPSConfig
from .registry import register

DISC_STRIDE = 16  # four stride-2 convolutions


@dataclass
class RRNConfig(CPSConfig):
    cell: int = option(
        28,
        f"side of the regions the discriminators score, in pixels: 0 (one region, the whole image) or at "
        f"least their stride of {DISC_STRIDE}",
        NON_NEGATIVE_INT,
    )
    selection_threshold: float = option(
        0.6,
        "discriminator score above which a region is accepted, in (0, 1)",
        number_in(0, 1, "a number in (0, 1)", True, True),
    )
    correction: bool = option(
        True, "weight regions by the peer's discriminator too (dynamic region-loss correction)", BOOLEAN
    )
    agree_weight: float = option(1.0, "selection weight of a region both discriminators accept", NON_NEGATIVE_NUMBER)
    disagree_weight: float = option(0.5, "selection weight of a region one discriminator accepts", NON_NEGATIVE_NUMBER)
    selection_weight: float = option(1.0, "weight of the local selection loss", NON_NEGATIVE_NUMBER)
    selection_start_epoch: int = option(1, "first (0-based) epoch of the local selection loss", NON_NEGATIVE_INT)
    feature_matching_weight: float = option(0.1, "weight of the feature-matching loss", NON_NEGATIVE_NUMBER)
    disc_width: int = option(
        32, "channels of the discriminators' first convolution, then x2, x4, x8 (RRN's code: 64)", POSITIVE_INT
    )
    disc_lr: float = option(1e-4, "the discriminators' Adam learning rate", POSITIVE_NUMBER)


class RegionDiscriminator(nn.Module):
    """s4GAN's discriminator, scoring regions: four 4x4 stride-2 convolutions (width, 2, 4 and 8
    times it channels, each with LeakyReLU 0.2 and Dropout2d 0.5), the last map average-pooled
    over each cell of a grid, one linear score per cell."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(4):
            layers += [
                nn.Conv2d(in_channels, width << k, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Dropout2d(0.5),
            ]
            in_channels = width << k
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(in_channels, 1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(score logits (N, rows, cols), cell features (N, rows, cols, channels)) of a grid of cells."""
        cells = F.adaptive_avg_pool2d(self.features(x), grid).permute(0, 2, 3, 1)
        return self.score(cells).squeeze(-1), cells


def cell_grid(height: int, width: int, cell: int) -> tuple[int, int]:
    """(rows, cols) of cells of side ``cell`` covering the image (0: one cell)."""
    return (1, 1) if cell == 0 else (math.ceil(height / cell), math.ceil(width / cell))


def cells_to_pixels(values: torch.Tensor, height: int, width: int, cell: int) -> torch.Tensor:
    """(N, rows, cols) per-cell values as (N, height, width) per-pixel ones."""
    if cell == 0:
        return values.expand(-1, height, width)
    return values.repeat_interleave(cell, 1)[:, :height].repeat_interleave(cell, 2)[:, :, :width]


def discriminator_input(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[class maps, each image min-max normalised to [0, 1]], as s4GAN's discriminator reads them."""
    flat = images.float().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scaled = (images.float() - low[:, None, None, None]) / (high - low).clamp(min=1e-6)[:, None, None, None]
    return torch.cat([maps.float(), scaled], dim=1)


def feature_matching(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """mean |E real - E fake| over feature channels, E the mean over images and cells."""
    return (real.flatten(0, -2).mean(0) - fake.flatten(0, -2).mean(0)).abs().mean()


def frozen(module: nn.Module, *args):
    """``module(*args)`` with its parameters detached: the gradient reaches the inputs only."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, args)


@register
class RRN(CPS):
    name = "rrn"
    description = "RRN: CPS with region-level discriminators, local selection loss and dynamic region-loss correction"
    config = RRNConfig

    @classmethod
    def check_config(cls, config, fail) -> None:
        super().check_config(config, fail)
        cell = config["semi"]["rrn"]["cell"]
        if 0 < cell < DISC_STRIDE:
            fail("semi.rrn.cell", f"0 or at least {DISC_STRIDE} (the discriminators' stride), got {cell}")

    def state(self) -> nn.ModuleList:
        """The two networks' discriminators."""
        width = self.settings["disc_width"]
        self.discriminators = nn.ModuleList(RegionDiscriminator(self.num_classes + 3, width) for _ in range(2))
        return self.discriminators

    def state_optimizer(self, state: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(state.parameters(), lr=self.settings["disc_lr"], betas=(0.9, 0.99))

    def step(self, ctx: StepContext, labeled, unlabeled) -> StepOutput:
        s, ignore_index = self.settings, ctx.ignore_index
        p = self.cps_pass(ctx, labeled, unlabeled)
        images_l, labels_l = labeled
        height, width = p.ignored.shape[-2:]
        grid = cell_grid(height, width, s["cell"])
        classes = torch.arange(self.num_classes, device=labels_l.device)[:, None, None]
        real = discriminator_input(labels_l[:, None] == classes, images_l)
        selecting = ctx.epoch >= s["selection_start_epoch"]
        disc_loss, fm, selection, selected = 0.0, 0.0, 0.0, torch.zeros((), device=real.device)
        for b, logits in enumerate(p.logits):
            own, peer = self.discriminators[b], self.discriminators[1 - b]
            probs = p.up.full(logits).float().softmax(1).masked_fill(p.ignored[:, None], 0.0)
            fake = discriminator_input(probs, p.mixed)
            real_logit, real_cells = own(real, grid)
            fake_logit, _ = own(fake.detach(), grid)
            disc_loss = disc_loss + 0.5 * (
                F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
            )
            fm = fm + feature_matching(real_cells.detach(), frozen(own, fake, grid)[1])
            if selecting:
                loss_b, selected_b = self._selection_loss(
                    logits, p, fake_logit.detach(), peer, fake, grid, ignore_index
                )
                selection, selected = selection + loss_b, selected + selected_b
        unsup = p.cps + s["selection_weight"] * selection
        loss = p.supervised + ctx.unsupervised_weight * unsup + s["feature_matching_weight"] * fm + p.depth
        # every pixel trains through CPS: the informative share is the one the selection loss trained
        ratio = selected / (2 * (~p.ignored).sum()).clamp(min=1)
        return StepOutput(loss, p.supervised.detach(), unsup.detach(), ratio, state_loss=disc_loss)

    def pseudo_labels(self, teacher, images, indices, epoch):
        """The argmax of ``teacher`` (the evaluated network 1: its EMA copy with targets=ema, which
        labels for network 2; the selection trains network 1 itself), kept in the regions the selection
        loss would train at ``epoch`` (accepted by network 1's discriminator or, with correction, by
        either; none before the selection's epoch), the discriminators in eval mode."""
        s = self.settings
        up = self.upsampling(images)
        logits = model_outputs(teacher(images))[0]
        label = up.stats(logits).label
        if epoch < s["selection_start_epoch"]:
            return label, torch.zeros_like(label, dtype=torch.bool)
        fake = discriminator_input(resized(logits, images.shape[-2:]).float().softmax(1), images)
        grid = cell_grid(*images.shape[-2:], s["cell"])
        judges = self.discriminators if s["correction"] else self.discriminators[:1]
        was_training = self.discriminators.training
        self.discriminators.eval()
        try:
            accepted = torch.stack([d(fake, grid)[0].sigmoid() > s["selection_threshold"] for d in judges]).any(0)
        finally:
            self.discriminators.train(was_training)
        return label, cells_to_pixels(accepted, *images.shape[-2:], s["cell"])

    def _selection_loss(
        self, logits, p, own_logit, peer, fake, grid, ignore_index
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_st of one network: cross-entropy on its own argmax, weighted per cell by the
        discriminators' verdicts; the number of pixels it trains)."""
        s = self.settings
        with torch.no_grad():
            accepted = own_logit.sigmoid() > s["selection_threshold"]
            if s["correction"]:
                by_peer = peer(fake.detach(), grid)[0].sigmoid() > s["selection_threshold"]
                both, one = accepted & by_peer, accepted ^ by_peer
                cell_weight = both * s["agree_weight"] + one * s["disagree_weight"]
            else:
                cell_weight = accepted.float()
            weight = cells_to_pixels(cell_weight, *p.ignored.shape[-2:], s["cell"]).masked_fill(p.ignored, 0.0)
            target = pixel_stats(logits.detach(), **p.up.kwargs).label.masked_fill(p.ignored, ignore_index)
            selected = (weight > 0).sum()
        loss = pseudo_label_cross_entropy(
            logits, target, weight=weight, ignore_index=ignore_index, normalizer=selected, **p.up.kwargs
        )
        return loss, selected
