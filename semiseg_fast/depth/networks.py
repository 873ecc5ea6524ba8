"""The depth network (the segmentation model's small encoder and decoder, continued to full
resolution, disparities at four scales) and the pose network: Monodepth2's pair in the size of the
embedded world."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..models.deeplab import ASPP, SMALL_RATES, SmallEncoder, conv_bn_relu
from ..models.pretrained import DEPTH_WEIGHTS

MIN_DEPTH, MAX_DEPTH = 0.1, 100.0  # Monodepth2's: a sigmoid output maps to depth in this range
SCALES = 4  # full, 1/2, 1/4 and 1/8 resolution


def conv_elu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ELU(inplace=True))


def disparity_to_depth(disparity: torch.Tensor) -> torch.Tensor:
    """Depth from the network's sigmoid output, as Monodepth2 maps it: 1 / (a + (b - a) * disp)."""
    low, high = 1.0 / MAX_DEPTH, 1.0 / MIN_DEPTH
    return 1.0 / (low + (high - low) * disparity)


class DepthNet(nn.Module):
    """The segmentation model's small encoder and decoder (``encoder``, ``aspp``, ``reduce``,
    ``fuse``: the modules, names and shapes of :class:`DeepLabV3Plus`'s, so that segmentation can
    start from all of them) continued up to full resolution, U-Net style, with the stem's features.
    ``forward(x)`` takes normalised images and returns ``SCALES`` sigmoid disparities, full
    resolution first, then 1/2, 1/4 (the decoder's) and 1/8 (ASPP's)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = SmallEncoder(width)
        stem, low, _, deep = width, *self.encoder.channels  # the stem's output has `width` channels
        aspp, reduce, fused, half = 2 * width, width // 2, 2 * width, width // 2  # as DeepLabV3Plus's
        self.aspp = ASPP(deep, aspp, SMALL_RATES)
        self.reduce = conv_bn_relu(low, reduce, 1)
        self.fuse = nn.Sequential(conv_bn_relu(aspp + reduce, fused), conv_bn_relu(fused, fused))
        self.up2 = nn.Sequential(conv_elu(fused + stem, half), conv_elu(half, half))
        self.up1 = nn.Sequential(conv_elu(half, half), conv_elu(half, half))
        self.heads = nn.ModuleList(
            [nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, 1, 3)) for c in (half, half, fused, aspp)]
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's features the decoder reads: the stem's (1/2), the first stage's (1/4) and
        the last stage's (1/8)."""
        enc = self.encoder
        s2 = enc.stem(x)
        low = enc.layer1(s2)
        return s2, low, enc.layer3(enc.layer2(low))

    def decode(self, encoded: tuple[torch.Tensor, ...], size: tuple[int, int]) -> list[torch.Tensor]:
        """The features the disparities are read from, at full (``size``), 1/2, 1/4 and 1/8
        resolution, from :meth:`encode`'s."""
        s2, low, deep = encoded
        context = self.aspp(deep)
        up = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        f4 = self.fuse(torch.cat([self.reduce(low), up], 1))
        f2 = self.up2(torch.cat([F.interpolate(f4, size=s2.shape[-2:], mode="nearest"), s2], 1))
        f1 = self.up1(F.interpolate(f2, size=size, mode="nearest"))
        return [f1, f2, f4, context]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.encode(x), x.shape[-2:])

    def disparities(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.sigmoid(head(f)) for head, f in zip(self.heads, features)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.disparities(self.features(x))


def cost_volume(a: torch.Tensor, b: torch.Tensor, reach: int) -> torch.Tensor:
    """(N, (2 reach + 1)^2, h, w): the dot product of ``a``'s features at each cell with ``b``'s
    at every shift up to ``reach`` cells (zero beyond ``b``'s border), shifts in row-major order."""
    h, w = a.shape[-2:]
    padded = F.pad(b, (reach, reach, reach, reach))
    shifts = range(2 * reach + 1)
    return torch.stack([(a * padded[..., i : i + h, j : j + w]).sum(1) for i in shifts for j in shifts], 1)


class PoseNet(nn.Module):
    """Two normalised frames, earlier first, concatenated on channels -> (axis-angle (N, 3),
    translation (N, 3)) of the motion between them.

    Each frame goes through the small encoder's stem and first stage (stride 4, started from the
    pretrained weights by :meth:`start_from`); the cost volume of the two frames' unit-length
    features at every shift up to ``reach`` cells, with each cell's coordinates, is reduced by two
    strided convolutions to a 4x4 grid, and a linear layer maps the grid to the motion, scaled by
    0.01 so that training starts near no motion. Why not Monodepth2's encoder of the stacked pair
    with a decoder averaged over the image: at this size it learned the sideways motion slowly and
    each clip's forward speed not at all, even against the true depth, and the cells' coordinates
    did not help it; the cost volume states the displacements, the grid keeps where they are."""

    def __init__(self, width: int = 32, reach: int = 3):
        super().__init__()
        encoder = SmallEncoder(width)
        self.stem, self.layer1, self.reach = encoder.stem, encoder.layer1, reach
        hidden = 2 * width
        self.head = nn.Sequential(
            nn.Conv2d((2 * reach + 1) ** 2 + 2, hidden, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 2, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * hidden, 6),
        )  # fmt: skip

    def start_from(self, encoder: SmallEncoder) -> None:
        """The stem and first stage of a pretrained single-image ``encoder``."""
        self.stem.load_state_dict(encoder.stem.state_dict())
        self.layer1.load_state_dict(encoder.layer1.state_dict())

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = pair.shape[0]
        features = F.normalize(self.layer1(self.stem(torch.cat([pair[:, :3], pair[:, 3:]]))), dim=1)
        cost = cost_volume(features[:n], features[n:], self.reach)
        h, w = cost.shape[-2:]
        ys = torch.linspace(-1, 1, h, device=cost.device, dtype=cost.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=cost.device, dtype=cost.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
        motion = 0.01 * self.head(torch.cat([cost, xs, ys], 1))
        return motion[:, :3], motion[:, 3:]


def frozen_depth_network(run_dir: str, key: str) -> DepthNet:
    """The depth network a depth run wrote (``RUN_DIR/depth.pt``), in eval mode and without
    gradients; a file that holds none is refused naming the config ``key`` that pointed there."""
    path = os.path.join(run_dir, DEPTH_WEIGHTS)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["depth"]
        net = DepthNet(width=2 * state["encoder.stem.0.0.weight"].shape[0])  # the stem's first conv: width / 2
        net.load_state_dict(state)
    except Exception as e:  # no file, not a torch file, no "depth" entry, another network's weights
        raise ValueError(f"{key}: {path!r} holds no depth network ({type(e).__name__}: {e})") from e
    return net.eval().requires_grad_(False)
