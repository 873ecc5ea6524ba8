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

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features the disparities are read from, at full, 1/2, 1/4 and 1/8 resolution."""
        enc = self.encoder
        s2 = enc.stem(x)
        low = enc.layer1(s2)
        context = self.aspp(enc.layer3(enc.layer2(low)))
        up = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        f4 = self.fuse(torch.cat([self.reduce(low), up], 1))
        f2 = self.up2(torch.cat([F.interpolate(f4, size=s2.shape[-2:], mode="nearest"), s2], 1))
        f1 = self.up1(F.interpolate(f2, size=x.shape[-2:], mode="nearest"))
        return [f1, f2, f4, context]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.sigmoid(head(f)) for head, f in zip(self.heads, self.features(x))]


class PoseNet(nn.Module):
    """Two normalised frames, earlier first, concatenated on channels -> (axis-angle (N, 3),
    translation (N, 3)) of the motion between them. Monodepth2's design in the size of the embedded
    world: the segmentation model's small encoder with a six-channel stem (:meth:`start_from` gives
    it a pretrained single-image encoder's weights) and Monodepth2's pose decoder, its outputs
    averaged over the image and scaled by 0.01 so that training starts near no motion."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = SmallEncoder(width)
        one = self.encoder.stem[0][0]  # the first convolution, for one image
        self.encoder.stem[0][0] = nn.Conv2d(6, one.out_channels, one.kernel_size, one.stride, one.padding, bias=False)
        hidden = 2 * width
        self.decoder = nn.Sequential(
            nn.Conv2d(self.encoder.channels[2], hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 6, 1),
        )  # fmt: skip

    def start_from(self, encoder: SmallEncoder) -> None:
        """Monodepth2's start for a pair of frames: ``encoder``'s weights, its first convolution's
        spread over both frames and halved, so that the pair's features start as one image's."""
        state = encoder.state_dict()
        key = "stem.0.0.weight"
        state[key] = torch.cat([state[key], state[key]], 1) / 2
        self.encoder.load_state_dict(state)

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        motion = 0.01 * self.decoder(self.encoder(pair)[2]).mean(dim=(2, 3))
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
