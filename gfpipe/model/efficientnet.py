"""EfficientNet-B2/B3 in plain torch, in the timm gen-efficientnet layout of the official GFNet files.

Keys: `conv_stem`, `bn1`, `blocks.S.B.*` (stages S = 0..6), `conv_head`, `bn2`, `classifier`, so
the official `model_state_dict` / `model_prime_state_dict` load with strict matching. Padding is
PyTorch-style symmetric, ((stride - 1) + (k - 1)) // 2 (= k // 2 for the odd kernels and strides
1, 2 used here), not TensorFlow's 'same', as in the checkpoints' own code.

The blocks reuse MobileNet-V3's (`backbones.py`): the same depthwise-separable and inverted
residual structure with Swish instead of ReLU / hard-swish, and a squeeze-excite whose bottleneck
is a quarter of the block's *input* width with a Swish and a sigmoid gate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfpipe.model.backbones import (
    Backbone,
    DepthwiseSeparable,
    InvertedResidual,
    SqueezeExcite,
    _init_weights,
    drop_path,
    make_divisible,
)

# EfficientNet-B0 per stage: (kind, repeats, kernel, stride of the first block, expansion, out
# channels); every block has squeeze-excite with ratio 0.25. "ds" = depthwise-separable.
_B0_STAGES = [
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
]
_B0_STEM, _B0_HEAD = 32, 1280

# Compound scaling (width multiplier, depth multiplier), EfficientNet paper / timm.
SCALES: dict[str, tuple[float, float]] = {"b2": (1.1, 1.2), "b3": (1.2, 1.4)}


def round_channels(channels: int, multiplier: float) -> int:
    """A width times the width multiplier, rounded to a multiple of 8 (timm's round_channels)."""
    return make_divisible(channels * multiplier)


def round_repeats(repeats: int, multiplier: float) -> int:
    """A stage's block count times the depth multiplier, rounded up (timm's 'ceil' rule)."""
    return int(math.ceil(repeats * multiplier))


def _se_width(cin: int) -> int:
    return max(1, int(cin * 0.25))


class SwishSqueezeExcite(SqueezeExcite):
    """EfficientNet's channel attention: Swish bottleneck, sigmoid gate."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        s = self.conv_expand(F.silu(self.conv_reduce(s)))
        return x * torch.sigmoid(s)


class EfficientDepthwiseSeparable(DepthwiseSeparable):
    """Stage-0 block: depthwise kxk, BN, Swish, squeeze-excite, pointwise 1x1, BN with no
    activation after it; residual (with drop-connect) when stride 1 and widths match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, drop_path: float = 0.0):
        super().__init__(cin, cout, kernel, stride, "swish", drop_path)
        self.se = SwishSqueezeExcite(cin, _se_width(cin))

    def forward(self, x: Tensor) -> Tensor:
        out = self.se(self.act(self.bn1(self.conv_dw(x))))
        out = self.bn2(self.conv_pw(out))
        return drop_path(out, self.drop_path, self.training) + x if self.has_skip else out


class MBConv(InvertedResidual):
    """Inverted residual with Swish and a Swish/sigmoid squeeze-excite sized from the block's input."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, drop_path: float = 0.0):
        super().__init__(cin, mid, cout, kernel, stride, "swish", se=False, drop_path=drop_path)
        self.se = SwishSqueezeExcite(mid, _se_width(cin))


class EfficientNet(Backbone):
    """EfficientNet scaled from B0 by (width, depth) multipliers. Feature map = output of
    `conv_head`, `bn2`, Swish (1408 ch for B2, 1536 for B3); pooled = its global average (the
    head convolution comes before the pooling, unlike MobileNet-V3). Block i of n drops its
    residual branch at rate drop_connect * i / n (stochastic depth, training only)."""

    def __init__(self, width: float, depth: float, head_classes: int | None = None, drop_connect: float = 0.0) -> None:
        super().__init__()
        stem = round_channels(_B0_STEM, width)
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        plan = [
            (kind, round_repeats(repeats, depth), kernel, stride, expansion, round_channels(cout, width))
            for kind, repeats, kernel, stride, expansion, cout in _B0_STAGES
        ]
        total = sum(stage[1] for stage in plan)
        index, cin = 0, stem
        stages: list[nn.Module] = []
        for kind, repeats, kernel, stride, expansion, cout in plan:
            blocks: list[nn.Module] = []
            for i in range(repeats):
                rate = drop_connect * index / total  # deeper blocks drop more (timm's schedule)
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(EfficientDepthwiseSeparable(cin, cout, kernel, s, rate))
                else:
                    blocks.append(MBConv(cin, make_divisible(cin * expansion), cout, kernel, s, rate))
                cin = cout
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        head = round_channels(_B0_HEAD, width)
        self.conv_head = nn.Conv2d(cin, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.map_channels = self.feature_dim = head
        # The encoder's own head (`head`): GFNet's step-1 logits for imported files, and the
        # auxiliary loss in training.
        self.classifier = nn.Linear(head, head_classes) if head_classes else None
        _init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.silu(self.bn1(self.conv_stem(x)))  # (N, stem, s/2, s/2)
        x = self.blocks(x)  # (N, 320 * width, ceil(s/32), ceil(s/32))
        fmap = F.silu(self.bn2(self.conv_head(x)))  # (N, F, ceil(s/32), ceil(s/32))
        return fmap.mean((2, 3)), fmap  # (N, F), (N, F, h, w)


def efficientnet(variant: str, head_classes: int | None = None, drop_connect: float = 0.0) -> EfficientNet:
    """EfficientNet by variant name ("b2", "b3")."""
    if variant not in SCALES:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; known: {', '.join(sorted(SCALES))}")
    width, depth = SCALES[variant]
    return EfficientNet(width, depth, head_classes, drop_connect)
