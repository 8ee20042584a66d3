import pytest
import torch

from gfpipe.model import build_backbone
from gfpipe.model.backbones import make_divisible

# Parameter counts published for torchvision's ResNets and timm's mobilenetv3_large_100 (with
# their 1000-class heads): the same count means the same layers.
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenetv3_large_100": 5_483_032,
}


@pytest.mark.parametrize("name,count", PUBLISHED_PARAMS.items())
def test_parameter_counts_match_published(name, count):
    backbone = build_backbone(name, head_classes=1000)
    assert sum(p.numel() for p in backbone.parameters()) == count


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_large_100", "tiny"])
@pytest.mark.parametrize("size", [96, 100])
def test_returns_pooled_and_feature_map(name, size):
    backbone = build_backbone(name, width=8).eval()
    with torch.no_grad():
        pooled, fmap = backbone(torch.randn(2, 3, size, size))
    side = backbone.map_size(size)
    assert pooled.shape == (2, backbone.feature_dim)
    assert fmap.shape == (2, backbone.map_channels, side, side)
    assert side == -(-size // 32)


def test_torchvision_layout_loads_strictly_and_without_head():
    with_head = build_backbone("resnet18", head_classes=1000)
    state = with_head.state_dict()
    assert "fc.weight" in state and "layer2.0.downsample.0.weight" in state
    build_backbone("resnet18", head_classes=1000).load_state_dict(state, strict=True)
    headless = build_backbone("resnet18")
    headless.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError, match="known backbones: .*mobilenetv3_large_100.*resnet50.*tiny"):
        build_backbone("vgg16")


def test_make_divisible_follows_mobilenet_rule():
    assert [make_divisible(v) for v in (18, 30, 184, 200, 4)] == [24, 32, 184, 200, 8]
