"""DeepLabv3+: an encoder (the small residual one below, or a ResNet from ``resnet.py``), ASPP, a
decoder that fuses the stride-4 features, and U2PL's representation head. The small encoder is
sized for CPU training on small images; every layer is a plain conv/BN/ReLU, so the model runs in
channels_last without layout changes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .pseudoseg import PseudoSegHeads
from .tap_grad import conv2d_tap_grad

DEFAULT_WIDTH = 32  # the small encoder's channels at stride 4
SMALL_RATES = (2, 4, 6)  # ASPP's dilations over the small encoder's stride-8 features


class DilatedConv2d(nn.Conv2d):
    """A stride-1 "same" convolution with dilation that leaves out the kernel rows (columns) whose
    taps fall only on zero padding, when the dilation is at least the map's height (width): on the
    small maps of reduced crops ASPP's wider rates are 1x1 convolutions, computed as such. Traced
    or with symbolic sizes it runs the full kernel, so a graph never depends on the size it saw.
    Where most taps read padding, the weight gradient skips it (``tap_grad``)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, bias: bool = False):
        if kernel % 2 == 0:
            raise ValueError(f"kernel: expected an odd size, got {kernel}")
        super().__init__(cin, cout, kernel, 1, dilation * (kernel // 2), dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]  # not unpacked: an fx Proxy cannot be iterated
        if torch.jit.is_tracing() or not (isinstance(height, int) and isinstance(width, int)):
            return super().forward(x)
        (dh, dw), (ph, pw), weight = self.dilation, self.padding, self.weight
        r = self.kernel_size[0] // 2
        if dh >= height:
            weight, dh, ph = weight[:, :, r : r + 1], 1, 0
        if dw >= width:
            weight, dw, pw = weight[:, :, :, r : r + 1], 1, 0
        return conv2d_tap_grad(x, weight, self.bias, (ph, pw), (dh, dw))


def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A bias-free "same" convolution (bias-free: batch norm follows)."""
    if dilation > 1 and stride == 1:
        return DilatedConv2d(cin, cout, kernel, dilation)
    return nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel // 2), dilation=dilation, bias=False)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout, kernel, stride, dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, 3, stride, dilation), conv(cout, cout, 3, 1, dilation), nn.BatchNorm2d(cout)
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ASPP(nn.Module):
    """Parallel dilated 3x3 convolutions plus image pooling, projected back to ``cout``."""

    def __init__(self, cin: int, cout: int, dilations: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, 1, d) for d in dilations]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(dilations) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class SmallEncoder(nn.Module):
    """A residual encoder at output stride 8 for small images, ``width`` channels at stride 4.
    ``forward(x)`` returns (low: stride 4, mid: stride 8, deep: stride 8, dilated)."""

    def __init__(self, width: int = DEFAULT_WIDTH):
        super().__init__()
        if width < 4 or width % 2:
            raise ValueError(f"width: expected an even integer >= 4, got {width}")
        w = width
        self.stem = nn.Sequential(conv_bn_relu(3, w // 2, 3, 2), conv_bn_relu(w // 2, w, 3))  # 1/2
        self.layer1 = nn.Sequential(ResidualBlock(w, w, 2), ResidualBlock(w, w))  # 1/4
        self.layer2 = nn.Sequential(ResidualBlock(w, 2 * w, 2), ResidualBlock(2 * w, 2 * w))  # 1/8
        self.layer3 = nn.Sequential(ResidualBlock(2 * w, 4 * w, 1, 2), ResidualBlock(4 * w, 4 * w, 1, 2))
        self.channels = (w, 2 * w, 4 * w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        mid = self.layer2(low)
        return low, mid, self.layer3(mid)


BACKBONES = ("small", "resnet50", "resnet101")


def build_encoder(backbone: str, width: int, output_stride: int) -> nn.Module:
    if backbone == "small":
        if output_stride != 8:
            raise ValueError(f"output_stride: the small backbone has 8, got {output_stride}")
        return SmallEncoder(width)
    if backbone in ("resnet50", "resnet101"):
        from .resnet import ResNetEncoder

        return ResNetEncoder(backbone, output_stride)
    raise ValueError(f"backbone: expected one of {' | '.join(BACKBONES)}, got {backbone!r}")


class DeepLabV3Plus(nn.Module):
    """``forward(x)`` returns ``{"pred": logits, "rep": features}``, both at 1/4 of the input
    resolution (the training loop upsamples the logits, as UniMatch and U2PL do).

    ``backbone``: ``small`` (the residual encoder above, ``width`` channels at stride 4) or
    ``resnet50`` / ``resnet101`` at ``output_stride`` 8 or 16 with U2PL's decoder (256-channel ASPP
    at rates 6/12/18 per stride 16, 48-channel low-level projection). The encoder is
    ``model.encoder``: pretrained weights load into it and ``optim.head_lr_mult`` sets everything
    else apart. ``rep_dim=None`` leaves out the representation head (methods without a contrastive
    term). ``pseudoseg=True`` adds PseudoSeg's image classifier and SGC head on the deepest
    features: the output then also holds ``"cls"`` (N, C - 1) and ``"sgc"`` logits at the size of
    ``"pred"``; ``forward(x, image_labels)`` passes known image labels to the Grad-CAM;
    ``pseudoseg_classifier_backprop=False`` keeps the classifier's loss out of the backbone.
    ``depth_head=True`` adds a disparity head on the decoder's features: ``"disparity"`` (N, 1, h, w)
    in (0, 1), Monodepth2's sigmoid disparity, at the size of ``"pred"``."""

    def __init__(
        self,
        num_classes: int,
        width: int = DEFAULT_WIDTH,
        rep_dim: int | None = 64,
        dilations: Sequence[int] | None = None,
        pseudoseg: bool = False,
        pseudoseg_classifier_backprop: bool = True,
        backbone: str = "small",
        output_stride: int = 8,
        depth_head: bool = False,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride: expected 8 or 16, got {output_stride}")
        self.encoder = build_encoder(backbone, width, output_stride)
        low_ch, mid_ch, deep_ch = self.encoder.channels
        if backbone == "small":
            aspp_ch, reduce_ch, fuse_ch, default_rates = 2 * width, width // 2, 2 * width, SMALL_RATES
        else:
            aspp_ch, reduce_ch, fuse_ch = 256, 48, 256
            default_rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(deep_ch, aspp_ch, default_rates if dilations is None else dilations)
        self.reduce = conv_bn_relu(low_ch, reduce_ch, 1)
        self.fuse = nn.Sequential(conv_bn_relu(aspp_ch + reduce_ch, fuse_ch), conv_bn_relu(fuse_ch, fuse_ch))
        self.classifier = nn.Conv2d(fuse_ch, num_classes, 1)
        self.representation = (
            nn.Sequential(conv_bn_relu(fuse_ch, fuse_ch), nn.Conv2d(fuse_ch, rep_dim, 1)) if rep_dim else None
        )
        # PseudoSeg: Grad-CAM of the deepest features, attention over mid + deep (the same stride)
        self.pseudoseg = (
            PseudoSegHeads(num_classes, deep_ch, mid_ch + deep_ch, classifier_backprop=pseudoseg_classifier_backprop)
            if pseudoseg
            else None
        )
        # Hoyer et al.'s multi-task variant: a disparity (sigmoid) read from the decoder's features
        self.depth_head = (
            nn.Sequential(conv_bn_relu(fuse_ch, fuse_ch), nn.Conv2d(fuse_ch, 1, 1)) if depth_head else None
        )
        self.num_classes = num_classes
        self.perturbation: FeaturePerturbation | None = None  # set by perturbed_features

    def forward(self, x: torch.Tensor, image_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Inside :func:`perturbed_features` the output also holds ``"pred_fp"`` (UniMatch's
        feature perturbation): the logits of images ``start`` onwards decoded again from their
        stride-4 and deepest features with whole channels dropped, in the same decoder pass as
        the clean features, as UniMatch batches them. A model attribute, not an argument, so that
        fx and jit tracing see no branch on an input."""
        low, mid, deep = self.encoder(x)
        fp = self.perturbation
        if fp is not None:
            n = x.shape[0]
            if not 0 <= fp.start < n:
                raise ValueError(f"perturbed_features: start expected an index into the batch of {n}, got {fp.start}")

            def with_perturbed(t: torch.Tensor) -> torch.Tensor:
                return torch.cat([t, _drop_channels(t[fp.start :], fp.rate, fp.generator)])

            feats, feats_fp = self._decode(with_perturbed(low), with_perturbed(deep)).split([n, n - fp.start])
        else:
            feats = self._decode(low, deep)
        out = {"pred": self.classifier(feats)}
        if fp is not None:
            out["pred_fp"] = self.classifier(feats_fp)
        if self.representation is not None:
            out["rep"] = self.representation(feats)
        if self.depth_head is not None:
            out["disparity"] = torch.sigmoid(self.depth_head(feats))
        if self.pseudoseg is not None:
            out["cls"], sgc = self.pseudoseg(deep, torch.cat([mid, deep], dim=1), image_labels)
            out["sgc"] = F.interpolate(sgc, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def _decode(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """ASPP on the deepest features, upsampled and fused with the projected stride-4 ones."""
        high = F.interpolate(self.aspp(deep), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([self.reduce(low), high], dim=1))


@dataclass(frozen=True)
class FeaturePerturbation:
    rate: float  # share of the channels dropped
    start: int  # the first image of the batch that is perturbed
    generator: torch.Generator | None


@contextmanager
def perturbed_features(
    model: nn.Module, rate: float, start: int = 0, generator: torch.Generator | None = None
) -> Iterator[None]:
    """Calls of ``model`` (a :class:`DeepLabV3Plus`, or a DDP wrapper of one) in this block also
    return ``"pred_fp"``: images ``start`` onwards decoded from features with whole channels
    dropped at ``rate`` (``generator`` draws which)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, DeepLabV3Plus):
        raise TypeError(f"perturbed_features: model expected a DeepLabV3Plus, got {type(inner).__name__}")
    if not (isinstance(rate, (int, float)) and 0.0 < rate < 1.0):
        raise ValueError(f"perturbed_features: rate expected a number in (0, 1), got {rate!r}")
    inner.perturbation = FeaturePerturbation(float(rate), int(start), generator)
    try:
        yield
    finally:
        inner.perturbation = None


def _drop_channels(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Dropout2d: whole channels of each image zeroed with probability ``rate``, the rest scaled by
    1 / (1 - rate); the draw from ``generator`` keeps the step reproducible."""
    keep = torch.rand(x.shape[0], x.shape[1], 1, 1, generator=generator, device=x.device) >= rate
    return x * (keep.to(x.dtype) / (1.0 - rate))
