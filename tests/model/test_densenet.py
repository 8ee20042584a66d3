"""DenseNet-121/169/201: torchvision's layout, official GFNet files, counted Multiply-Adds.

The official reference vectors (densenet121 p96 T5) are reproduced in test_official_reference.py.
"""

import io
import itertools

import pytest
import torch

import gfpipe
from gfpipe.budget.costs import part_costs
from gfpipe.model import GFNet, GFNetConfig, build_backbone

from .official_files import assert_official_file_loads_and_runs, official_checkpoint

ARCHS = ["densenet121", "densenet169", "densenet201"]
WIDTH = {"densenet121": 1024, "densenet169": 1664, "densenet201": 1920}
# torchvision's DenseNet*_Weights.IMAGENET1K_V1 meta (num_params, "_ops": the GFLOPS column of
# its docs, which is Multiply-Adds at 224 with the 1000-class head; its resnet50 figure is 4.09,
# which gfpipe's counter also gives). Counters that also count BN/ReLU/pooling (ptflops) list
# 2.87 / 3.40 / 4.34 G instead; gfpipe, like the paper, counts convolutions and linear layers.
PUBLISHED = {
    "densenet121": (7_978_856, 2.834),
    "densenet169": (14_149_480, 3.36),
    "densenet201": (20_013_928, 4.291),
}


def as_file(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def small(arch: str, **kw) -> GFNet:
    torch.manual_seed(0)
    cfg = dict(backbone=arch, num_classes=5, input_size=64, patch_size=32, T=3)
    cfg.update(kw)
    return GFNet(GFNetConfig(**cfg)).eval()


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_counts_match_torchvision(name):
    backbone = build_backbone(name, head_classes=1000)
    assert sum(p.numel() for p in backbone.parameters()) == PUBLISHED[name][0]
    assert backbone.head is backbone.classifier  # torchvision's (and the official files') name


@pytest.mark.parametrize("name", ARCHS)
def test_macs_at_224_match_published(name):
    cfg = GFNetConfig(backbone=name, num_classes=1000, input_size=224, patch_size=224, T=1)
    counted = part_costs(cfg).glance_encoder / 1e9
    assert counted == pytest.approx(PUBLISHED[name][1], rel=0.03)


@pytest.mark.parametrize("name", ARCHS)
def test_returns_pooled_and_relu_feature_map(name):
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        pooled, fmap = backbone(torch.randn(2, 3, 64, 64))
    assert pooled.shape == (2, WIDTH[name]) and fmap.shape == (2, WIDTH[name], 2, 2)
    assert torch.isfinite(fmap).all() and (fmap >= 0).all()  # ReLU(norm5)
    assert torch.allclose(pooled, fmap.mean((2, 3)), atol=1e-6)


def test_map_size_follows_the_transitions_rounding_down():
    """conv0/pool0 round up, the 2x2 average pools round down: 100 gives 25 -> 12 -> 6 -> 3,
    not ceil(100 / 32) = 4."""
    backbone = build_backbone("densenet121").eval()
    assert [backbone.map_size(s) for s in (96, 100, 128, 224)] == [3, 3, 4, 7]
    with torch.no_grad():
        _, fmap = backbone(torch.randn(1, 3, 100, 100))
    assert fmap.shape[-2:] == (3, 3)


def test_family_defaults_follow_resnet():
    cfg = GFNetConfig(backbone="densenet169").resolved()
    assert (cfg.classifier, cfg.classifier_hidden, cfg.glance_logits) == ("gru", 1024, "classifier")
    assert (cfg.policy_conv_channels, cfg.policy_mlp_width, cfg.policy_hidden) == (0, 2048, 1024)


# The depth variants share one code path (only the block counts differ) and each is loaded
# strictly from official files below, so the whole-model tests run on densenet121 alone.


def test_step_costs_increase():
    costs = gfpipe.step_costs(GFNetConfig(backbone="densenet121", num_classes=1000, patch_size=96, T=5))
    assert len(costs) == 5 and costs[0] > 0
    assert all(b > a for a, b in itertools.pairwise(costs))


@pytest.mark.parametrize("name", ["densenet169", "densenet201"])
def test_official_files_load_strictly_and_run(name):
    """Keys and shapes from checkpoint_keys.json load strictly and run (the first variant is
    checked against reference vectors)."""
    cfg = assert_official_file_loads_and_runs(name, "classifier.weight", WIDTH[name]).config
    assert (cfg.glance_interpolation, cfg.glance_logits) == ("bilinear", "classifier")


def test_unknown_official_arch_is_one_clear_line():
    raw = official_checkpoint("densenet121", patch_size=96, T=2)
    raw["model_name"] = "densenet161"
    with pytest.raises(gfpipe.CheckpointError) as info:
        gfpipe.load_checkpoint(as_file(raw))
    message = str(info.value)
    assert "\n" not in message and "official arch 'densenet161' is not supported" in message
    assert all(arch in message for arch in ARCHS + ["regnety_600m", "regnety_800m", "regnety_1.6g"])
