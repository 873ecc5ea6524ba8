"""ResNet-50/101 encoders (torchvision's v1.5: the stride on the 3x3 convolution) whose parameter
and buffer names and shapes are torchvision's, so that a torchvision ImageNet file loads into them
as it is (its ``fc.*`` classifier is dropped on loading). The definition is our own rather than
torchvision's: no torchvision build matches the pinned CPU torch. Dilation replaces the stride of
layer4 at output stride 16 and of layer3 and layer4 at 8, as torchvision's
``replace_stride_with_dilation`` does (a dilated layer's first block keeps the previous dilation).
Every layer is a plain conv/BN/ReLU: the encoder runs in channels_last without layout changes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

# blocks per layer
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
EXPANSION = 4  # a bottleneck's output channels over its width

# torchvision's IMAGENET1K_V1 weights (the original recipe, 76.1 / 77.4 % top-1): those the
# torchvision-based DeepLab and semi-supervised segmentation baselines start from. (UniMatch and
# U2PL ship their own deep-stem ResNets, another layout.) IMAGENET1K_V2 (resnet50-11ad3fa6.pth,
# resnet101-cd907fc2.pth) has the same layout: pass such a file as model.pretrained=PATH.
IMAGENET_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (``stride``, ``dilation``), 1x1 expand, plus the shortcut: torchvision's
    names (conv1..3, bn1..3, downsample.0/.1)."""

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNetEncoder(nn.Module):
    """``name``: resnet50 | resnet101; ``output_stride``: 8 or 16. ``forward(x)`` returns
    (low: layer1 at stride 4, 256 channels; mid: layer3, 1024; deep: layer4, 2048), mid and deep at
    ``output_stride``. Random initialisation as torchvision's (Kaiming normal, fan-out)."""

    def __init__(self, name: str = "resnet50", output_stride: int = 16):
        super().__init__()
        if name not in DEPTHS:
            raise ValueError(f"backbone: expected one of {' | '.join(DEPTHS)}, got {name!r}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride: expected 8 or 16, got {output_stride}")
        self.name = name
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._cin, self._dilation = 64, 1
        blocks = DEPTHS[name]
        self.layer1 = self._make_layer(64, blocks[0], 1, dilate=False)
        self.layer2 = self._make_layer(128, blocks[1], 2, dilate=False)
        self.layer3 = self._make_layer(256, blocks[2], 2, dilate=output_stride == 8)
        self.layer4 = self._make_layer(512, blocks[3], 2, dilate=True)
        del self._cin, self._dilation
        self.channels = (64 * EXPANSION, 256 * EXPANSION, 512 * EXPANSION)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, width: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        cout = width * EXPANSION
        downsample = None
        if stride != 1 or self._cin != cout:
            downsample = nn.Sequential(nn.Conv2d(self._cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        layers = [Bottleneck(self._cin, width, stride, previous, downsample)]
        layers += [Bottleneck(cout, width, 1, self._dilation) for _ in range(1, blocks)]
        self._cin = cout
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        mid = self.layer3(self.layer2(low))
        return low, mid, self.layer4(mid)


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``backbone``, from torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) or downloaded
    into it. Without the file and without internet: a ValueError that says which file to get."""
    what = "model.pretrained=imagenet"
    if backbone not in IMAGENET_URLS:
        raise ValueError(f"{what}: ImageNet weights exist for {' | '.join(IMAGENET_URLS)}, not {backbone!r}")
    url = IMAGENET_URLS[backbone]
    filename = url.rsplit("/", 1)[1]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    advice = (
        f"download {url} on a machine with internet and pass model.pretrained=/path/to/{filename}, "
        f"or put the file at {cached}"
    )
    was_cached = os.path.isfile(cached)
    try:
        # check_hash: a download must match the hash in its name (a cached file is not rehashed)
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except OSError as e:  # URLError, HTTPError, timeouts, a full disk, an unwritable cache folder
        if was_cached:
            raise ValueError(f"{what}: cannot read {cached!r} ({type(e).__name__}: {e})") from e
        raise ValueError(
            f"{what}: could not download the {backbone} weights ({type(e).__name__}: {e}); {advice}"
        ) from e
    except Exception as e:  # a truncated or foreign file; a download whose hash differs
        detail = f"{type(e).__name__}: {e}"
        if was_cached or os.path.isfile(cached):
            raise ValueError(
                f"{what}: {cached!r} is not a readable {backbone} state dict ({detail}); "
                f"delete it and retry, or {advice}"
            ) from e
        raise ValueError(f"{what}: the download of {url} failed ({detail}); {advice}") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what}: {cached!r} holds no state dict; delete it and retry, or {advice}")
    return dict(state)
