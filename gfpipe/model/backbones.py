"""Encoder backbones in plain torch, each returning (pooled features, feature map).

GFNet uses two copies of one backbone: the global encoder sees the downsampled glance, the
local encoder sees full-resolution patches. The classifier consumes the pooled features and the
patch policy consumes the feature map, so every backbone returns both.

State-dict layouts follow the files people already have: ResNets use torchvision's key names
(so torchvision's ImageNet `.pth` files load with strict matching when the backbone is built with
`head_classes=1000`), and MobileNet-V3-Large uses the timm-style names that the official GFNet
checkpoints use. torchvision itself is not used (it does not run with the CPU torch build here).
DenseNet-121/169/201 (densenet.py, torchvision's names) and RegNet-Y-600MF/800MF/1.6GF
(regnet.py, pycls's AnyNet names) live in their own modules and are registered here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Backbone(nn.Module):
    """Common interface: `forward(x) -> (pooled (N, feature_dim), fmap (N, map_channels, h, w))`."""

    feature_dim: int
    map_channels: int
    # Number of stride-2 stages with kernel/padding such that each rounds up (ceil(x / 2)).
    num_stride2: int = 5

    def map_size(self, input_size: int) -> int:
        """Side of the feature map for a square input of side `input_size`."""
        size = input_size
        for _ in range(self.num_stride2):
            size = math.ceil(size / 2)
        return size

    @property
    def head(self) -> nn.Linear | None:
        """The encoder's own linear classifier on its pooled features (`fc` or `classifier`, as
        the family's files name it), or None when built without one. GFNet uses it only for
        the auxiliary term of its training loss; inference never calls it."""
        return getattr(self, "fc", None) or getattr(self, "classifier", None)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth ("drop-connect"): zero a residual branch for a random subset of images
    in training, scaling the kept ones by 1 / (1 - rate); identity in eval."""
    if not training or rate <= 0.0:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


def _init_weights(module: nn.Module) -> None:
    """He init for convolutions, unit BN, small linear weights: the torchvision/timm defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# ResNet (torchvision layout)
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution (torchvision's choice)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet-18/34/50. Feature map = layer4 output; pooled = its global average."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], head_classes: int | None = None):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.feature_dim = self.map_channels = 512 * block.expansion
        # The encoder's own head (`head`): for torchvision files and GFNet's auxiliary loss.
        self.fc = nn.Linear(self.feature_dim, head_classes) if head_classes else None
        _init_weights(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, s/4, s/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, C, ceil(s/32), ...)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, C)
        return pooled, x


# --------------------------------------------------------------------------------------------
# MobileNet-V3-Large 1.00 and 1.25 (timm-style layout, as in the official GFNet checkpoints)
# --------------------------------------------------------------------------------------------


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `value` (MobileNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class SqueezeExcite(nn.Module):
    """Channel attention: ReLU bottleneck, hard-sigmoid gate."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        s = self.conv_expand(F.relu(self.conv_reduce(s)))
        return x * F.hardsigmoid(s)


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "hswish": F.hardswish, "swish": F.silu}


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    return _ACTIVATIONS[name]


class DepthwiseSeparable(nn.Module):
    """First MobileNet-V3 block: depthwise 3x3, pointwise 1x1, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: str, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = drop_path
        self.conv_dw = nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = _activation(act)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return drop_path(out, self.drop_path, self.training) + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (squeeze-excite) -> project 1x1, residual when shapes allow."""

    def __init__(
        self, cin: int, mid: int, cout: int, kernel: int, stride: int, act: str, se: bool, drop_path: float = 0.0
    ):
        super().__init__()
        self.drop_path = drop_path
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, make_divisible(mid * 0.25)) if se else None
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act = _activation(act)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv_pw(x)))
        out = self.act(self.bn2(self.conv_dw(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.bn3(self.conv_pwl(out))
        return drop_path(out, self.drop_path, self.training) + x if self.has_skip else out


class ConvBnAct(nn.Module):
    def __init__(self, cin: int, cout: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn1(self.conv(x)))


# (kernel, expansion, out channels, squeeze-excite, activation, stride) per block, per stage.
_MOBILENETV3_LARGE = [
    [(3, 1, 16, False, "relu", 1)],
    [(3, 4, 24, False, "relu", 2), (3, 3, 24, False, "relu", 1)],
    [(5, 3, 40, True, "relu", 2), (5, 3, 40, True, "relu", 1), (5, 3, 40, True, "relu", 1)],
    [
        (3, 6, 80, False, "hswish", 2),
        (3, 2.5, 80, False, "hswish", 1),
        (3, 2.3, 80, False, "hswish", 1),
        (3, 2.3, 80, False, "hswish", 1),
    ],
    [(3, 6, 112, True, "hswish", 1), (3, 6, 112, True, "hswish", 1)],
    [(5, 6, 160, True, "hswish", 2), (5, 6, 160, True, "hswish", 1), (5, 6, 160, True, "hswish", 1)],
]


class MobileNetV3Large(Backbone):
    """MobileNet-V3-Large 1.00, or another channel multiplier `width` (1.25: the official GFNet
    `mobilenetv3_large_125`): every width of the 1.00 definition times `width`, rounded with
    `make_divisible` (stem 16 -> 24, map 960 -> 1200). Feature map = output of `blocks`; pooled =
    global average of it, then `conv_head` (1x1 with bias, 1280 at every width) and hard-swish."""

    def __init__(self, head_classes: int | None = None, drop_connect: float = 0.0, width: float = 1.0):
        super().__init__()
        stem = make_divisible(16 * width)
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages: list[nn.Module] = []
        cin = stem
        total = sum(len(stage) for stage in _MOBILENETV3_LARGE)
        index = 0
        for stage in _MOBILENETV3_LARGE:
            blocks: list[nn.Module] = []
            for kernel, expansion, cout, se, act, stride in stage:
                cout = make_divisible(cout * width)
                rate = drop_connect * index / total  # deeper blocks drop more (timm's schedule)
                index += 1
                if expansion == 1:
                    blocks.append(DepthwiseSeparable(cin, cout, kernel, stride, act, rate))
                else:
                    mid = make_divisible(cin * expansion)
                    blocks.append(InvertedResidual(cin, mid, cout, kernel, stride, act, se, rate))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        channels = make_divisible(960 * width)
        stages.append(nn.Sequential(ConvBnAct(cin, channels, "hswish")))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(channels, 1280, 1, bias=True)
        self.map_channels, self.feature_dim = channels, 1280
        # The encoder's own head (`head`): for timm-style files and GFNet's auxiliary loss.
        self.classifier = nn.Linear(1280, head_classes) if head_classes else None
        _init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.hardswish(self.bn1(self.conv_stem(x)))  # (N, stem, s/2, s/2)
        fmap = self.blocks(x)  # (N, map_channels, ceil(s/32), ceil(s/32))
        pooled = F.hardswish(self.conv_head(F.adaptive_avg_pool2d(fmap, 1)))  # (N, 1280, 1, 1)
        return torch.flatten(pooled, 1), fmap


# --------------------------------------------------------------------------------------------
# Tiny CNN for tests, the demo and CPU training
# --------------------------------------------------------------------------------------------


class TinyCNN(Backbone):
    """A small CNN for tests, the demo and CPU training; width w gives channels w, 2w, 4w, 8w.

    A lossless 2x2 space-to-depth stem (no pixel is thrown away, so small objects keep their
    detail), then four stages of max-pool and two 3x3 conv-BN-ReLU: total stride 32, like the
    real backbones, so policy shapes carry over. Pooled features are the global max and the
    global average of the last map, concatenated: the max keeps a small object's evidence that
    an average over a cluttered image would dilute.
    """

    def __init__(self, width: int = 16, head_classes: int | None = None):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), *_conv_bn_relu(12, width)]
        cin = width
        for cout in widths:
            layers += [nn.MaxPool2d(2, ceil_mode=True), *_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.map_channels = cin
        self.feature_dim = 2 * cin
        self.fc = nn.Linear(self.feature_dim, head_classes) if head_classes else None
        _init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % 2 or x.shape[-2] % 2:  # space-to-depth needs an even size
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        fmap = self.features(x)  # (N, 8w, ceil(s/32), ceil(s/32))
        pooled = torch.cat([fmap.amax(dim=(2, 3)), fmap.mean(dim=(2, 3))], dim=1)  # (N, 16w)
        return pooled, fmap


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _densenet(name: str, head_classes: int | None = None, **_: Any) -> Backbone:
    from gfpipe.model.densenet import densenet  # imported here: that module imports Backbone from this one

    return densenet(name, head_classes)


def _regnety(name: str, head_classes: int | None = None, **_: Any) -> Backbone:
    from gfpipe.model.regnet import regnety  # imported here: that module imports Backbone from this one

    return regnety(name, head_classes)


def _efficientnet(variant: str, head_classes: int | None = None, drop_connect: float = 0.0, **_: Any) -> Backbone:
    from gfpipe.model.efficientnet import efficientnet  # imported here: that module builds on this one's blocks

    return efficientnet(variant, head_classes, drop_connect)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": lambda head_classes=None, **_: ResNet(BasicBlock, [2, 2, 2, 2], head_classes),
    "resnet34": lambda head_classes=None, **_: ResNet(BasicBlock, [3, 4, 6, 3], head_classes),
    "resnet50": lambda head_classes=None, **_: ResNet(Bottleneck, [3, 4, 6, 3], head_classes),
    "mobilenetv3_large_100": lambda head_classes=None, drop_connect=0.0, **_: MobileNetV3Large(
        head_classes, drop_connect
    ),
    "mobilenetv3_large_125": lambda head_classes=None, drop_connect=0.0, **_: MobileNetV3Large(
        head_classes, drop_connect, width=1.25
    ),
    "efficientnet_b2": functools.partial(_efficientnet, "b2"),
    "efficientnet_b3": functools.partial(_efficientnet, "b3"),
    **{name: functools.partial(_densenet, name) for name in ("densenet121", "densenet169", "densenet201")},
    **{name: functools.partial(_regnety, name) for name in ("regnety_600m", "regnety_800m", "regnety_1.6g")},
    "tiny": lambda head_classes=None, width=16, **_: TinyCNN(width, head_classes),
}


def build_backbone(name: str, head_classes: int | None = None, width: int = 16, drop_connect: float = 0.0) -> Backbone:
    """Backbone by registry name; `width` applies to `tiny` only, `drop_connect` (stochastic
    depth of residual blocks, training only) to the families that use it (MobileNet-V3, EfficientNet)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](head_classes=head_classes, width=width, drop_connect=drop_connect)
