"""MobileNet-V3-Large 1.25: the 1.00 definition with channel multiplier 1.25, as the official file.

Its rule-2 reference vectors are reproduced in test_official_reference.py; the model-core sweep
(shapes, costs, checkpoint round trip) is in test_efficientnet.py.
"""

import io

import pytest
import torch

import gfpipe
from gfpipe.budget.costs import part_costs
from gfpipe.checkpoint import IMAGENET_PREPROCESSING
from gfpipe.model import GFNetConfig, build_backbone

from .official_files import assert_engine_matches_reference, official_checkpoint, official_key_shapes


def test_layout_is_the_official_one():
    want = official_key_shapes("mobilenetv3_large_125")["encoder"]
    backbone = build_backbone("mobilenetv3_large_125", head_classes=1000)
    assert {k: list(v.shape) for k, v in backbone.state_dict().items()} == want
    assert backbone.conv_stem.out_channels == 24
    assert (backbone.map_channels, backbone.feature_dim) == (1200, 1280)


def test_width_one_is_unchanged():
    assert build_backbone("mobilenetv3_large_100").map_channels == 960
    state = build_backbone("mobilenetv3_large_100", head_classes=1000).state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == official_key_shapes("mobilenetv3_large_100")["encoder"]


# No published MAdds figure for the 1.25 multiplier could be verified: the MobileNetV3 paper plots
# the 1.25 model (Figure 1) but tabulates only 1.0 (219M) and 0.75 (155M); TF-slim, Keras and
# torchvision list 1.0 and 0.75 only. So the counted value is pinned (0.354 G at 224, 1.64x the
# 1.00 model's 0.215 G, which test_costs.py checks against the published 217M).
def test_macs_at_224_are_the_counted_value():
    def gmacs(arch: str) -> float:
        cfg = GFNetConfig(backbone=arch, num_classes=1000, input_size=224, patch_size=224, T=1)
        return part_costs(cfg).glance_encoder / 1e9

    assert gmacs("mobilenetv3_large_125") == pytest.approx(0.354, rel=0.005)
    assert gmacs("mobilenetv3_large_125") / gmacs("mobilenetv3_large_100") == pytest.approx(1.64, rel=0.01)


def test_official_file_imports_with_the_imagenet_input():
    buf = io.BytesIO()
    torch.save(official_checkpoint("mobilenetv3_large_125", patch_size=128, T=3), buf)
    model = gfpipe.load_checkpoint(buf.getvalue())
    cfg = model.config
    assert (cfg.input_size, cfg.glance_interpolation, cfg.classifier, cfg.dropout) == (224, "bicubic", "cascade", 0.2)
    assert model.card.preprocessing == IMAGENET_PREPROCESSING


def test_engine_gives_the_official_answers():
    assert_engine_matches_reference("mobilenetv3_large_125_p128_T3_seed0_rule2.json")
