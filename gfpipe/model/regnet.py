"""RegNet-Y-600MF/800MF/1.6GF encoders in pycls's AnyNet layout, as the official GFNet checkpoints hold them.

Key names follow pycls (`stem.conv`, `stem.bn`; stages `s1`..`s4` of blocks `b1`..`bD`, each with
`f.a`, `f.a_bn`, `f.b` (grouped 3x3), `f.b_bn`, `f.se.f_ex.0`/`f.se.f_ex.2`, `f.c`, `f.c_bn`, and
`proj`/`bn` for the first block's projection skip; the top-level `fc`), so the official files'
encoder state dicts (after their `module.` prefix is removed) load strictly. pycls's `head` (a
global average pool) has no parameters and is the pooling in `forward`. Feature map = `s4`
output; pooled = its global average. The encoder's own head is `fc` (Linear(width, classes)):
the official `inference.py` takes RegNet's step-1 logits from the global encoder's `fc` (see
`GFNetConfig.glance_logits`); training's auxiliary loss reads both encoders' heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfpipe.model.backbones import Backbone, _init_weights

STEM = 32
SE_RATIO = 0.25  # squeeze-excite width = round(0.25 * the block's input width)


@dataclass(frozen=True)
class RegNetSpec:
    """Stage widths and depths (the pycls yaml files' values after quantisation) and group width."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    group_width: int


REGNETY: dict[str, RegNetSpec] = {
    "regnety_600m": RegNetSpec((48, 112, 256, 608), (1, 3, 7, 4), 16),
    "regnety_800m": RegNetSpec((64, 128, 320, 768), (1, 3, 8, 2), 16),
    "regnety_1.6g": RegNetSpec((48, 120, 336, 888), (2, 6, 17, 2), 24),
}


class Stem(nn.Module):
    """3x3 stride-2 convolution (no bias), BN, ReLU."""

    def __init__(self, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(3, cout, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Global average -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid gate on the channels."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.f_ex = nn.Sequential(
            nn.Conv2d(channels, reduced, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, channels, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.f_ex(F.adaptive_avg_pool2d(x, 1))  # (N, C, h, w) * (N, C, 1, 1)


class BottleneckTransform(nn.Module):
    """1x1 -> grouped 3x3 (the stride) -> squeeze-excite -> 1x1, BN after each convolution; no
    activation after the last (the block adds the skip first). Bottleneck multiplier 1."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 1, bias=False)
        self.a_bn = nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, stride, 1, groups=cout // group_width, bias=False)
        self.b_bn = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, round(SE_RATIO * cin))
        self.c = nn.Conv2d(cout, cout, 1, bias=False)
        self.c_bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.a_bn(self.a(x)))  # (N, cout, h, w)
        x = F.relu(self.b_bn(self.b(x)))  # (N, cout, h / stride, w / stride)
        return self.c_bn(self.c(self.se(x)))


class ResBottleneckBlock(nn.Module):
    """ReLU(skip + f(x)); the skip is a 1x1 projection with BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int):
        super().__init__()
        if cin != cout or stride != 1:
            self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.bn = nn.BatchNorm2d(cout)
        else:
            self.proj = self.bn = None
        self.f = BottleneckTransform(cin, cout, stride, group_width)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.proj is None else self.bn(self.proj(x))
        return F.relu(skip + self.f(x))


class RegNetY(Backbone):
    """RegNet-Y (squeeze-excite) with a stride-2 3x3 stem and four stride-2 stages."""

    def __init__(self, spec: RegNetSpec, head_classes: int | None = None):
        super().__init__()
        self.stem = Stem(STEM)
        cin = STEM
        for s, (width, depth) in enumerate(zip(spec.widths, spec.depths, strict=True), start=1):
            stage = nn.Sequential()
            for b in range(depth):
                block = ResBottleneckBlock(cin if b == 0 else width, width, 2 if b == 0 else 1, spec.group_width)
                stage.add_module(f"b{b + 1}", block)
            self.add_module(f"s{s}", stage)
            cin = width
        self.stages = [f"s{s}" for s in range(1, len(spec.widths) + 1)]
        self.feature_dim = self.map_channels = cin
        # The encoder's own head (`head`): pycls's top-level name, for official files, the
        # RegNet glance's logits and Eq. 3's aux loss.
        self.fc = nn.Linear(cin, head_classes) if head_classes else None
        _init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)  # (N, 32, s/2, s/2)
        for name in self.stages:
            x = getattr(self, name)(x)  # each stage halves the side (rounding up)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, C)
        return pooled, x  # x: (N, C, ceil(s/32), ceil(s/32))


def regnety(name: str, head_classes: int | None = None) -> RegNetY:
    """RegNet-Y by registry name (regnety_600m, regnety_800m, regnety_1.6g)."""
    return RegNetY(REGNETY[name], head_classes)
