"""DenseNet-121/169/201 encoders in torchvision's layout, as the official GFNet checkpoints hold them.

Key names follow torchvision's current form (`features.denseblockB.denselayerL.norm1`, `conv1`,
`norm2`, `conv2`; `features.transitionB.norm`/`conv`; `features.norm5`; `classifier`), so the
official files' encoder state dicts (after their `module.` prefix is removed) load strictly.
Feature map = ReLU(norm5 output); pooled = its global average. The encoder's own head is
`classifier` (Linear(width, classes)): GFNet inference never reads it, training's auxiliary loss
does. No dropout (torchvision's default drop_rate 0, as the official models use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfpipe.model.backbones import Backbone, _init_weights

GROWTH = 32  # channels each dense layer adds
BOTTLENECK = 4  # the 1x1 convolution's width is BOTTLENECK * GROWTH = 128
STEM = 64

# Dense layers per block.
DENSENET_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
}


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (to 128) -> BN-ReLU-conv3x3 (to 32); the output is appended to the input."""

    def __init__(self, cin: int):
        super().__init__()
        mid = BOTTLENECK * GROWTH
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, GROWTH, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))  # (N, 128, h, w)
        out = self.conv2(F.relu(self.norm2(out)))  # (N, 32, h, w)
        return torch.cat([x, out], 1)  # (N, cin + 32, h, w)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 halving the channels, then a 2x2 average pool (rounds the side down)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2, 2)  # (N, cout, h // 2, w // 2)


class DenseNet(Backbone):
    """DenseNet-BC (growth 32, stem 64). Feature map = ReLU(norm5 output), 1024 / 1664 / 1920 ch."""

    def __init__(self, blocks: tuple[int, ...], head_classes: int | None = None):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, STEM, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(STEM))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        width = STEM
        for b, layers in enumerate(blocks, start=1):
            block = nn.Sequential()
            for i in range(layers):
                block.add_module(f"denselayer{i + 1}", DenseLayer(width + i * GROWTH))
            self.features.add_module(f"denseblock{b}", block)
            width += layers * GROWTH
            if b < len(blocks):
                self.features.add_module(f"transition{b}", Transition(width, width // 2))
                width //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(width))
        self.feature_dim = self.map_channels = width
        # The encoder's own head (`head`): torchvision's name, for official files and Eq. 3's aux loss.
        self.classifier = nn.Linear(width, head_classes) if head_classes else None
        _init_weights(self)

    def map_size(self, input_size: int) -> int:
        """conv0 and pool0 round the side up; the three transitions' 2x2 average pools round it
        down, so the side is ceil(s / 32) only when ceil(s / 4) is a multiple of 8 (s = 96, 128, 224)."""
        size = -(-input_size // 4)
        for _ in range(3):
            size //= 2
        return size

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = F.relu(self.features(x))  # (N, C, h, w)
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)  # (N, C)
        return pooled, fmap


def densenet(name: str, head_classes: int | None = None) -> DenseNet:
    """DenseNet by registry name (densenet121, densenet169, densenet201)."""
    return DenseNet(DENSENET_BLOCKS[name], head_classes)
