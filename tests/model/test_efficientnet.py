"""EfficientNet-B2/B3: the official layout, published sizes and costs, official files in the engine.

The rule-2 reference vectors of `efficientnet_b2` are reproduced in test_official_reference.py;
here: layout against checkpoint_keys.json, parameter counts and MACs against published figures,
drop-connect, the importer's per-arch input, B3 files (no reference vectors) and the engine.
"""

import io
import math

import pytest
import torch

import gfpipe
from gfpipe.budget.costs import part_costs
from gfpipe.checkpoint import CheckpointError
from gfpipe.model import GFNet, GFNetConfig, build_backbone
from gfpipe.model.efficientnet import MBConv, round_channels, round_repeats
from gfpipe.train.config import resolve_config

from .official_files import assert_engine_matches_reference, official_checkpoint, official_key_shapes

ARCHS = ["efficientnet_b2", "efficientnet_b3"]


def _file(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_is_the_official_one(arch):
    want = official_key_shapes(arch)["encoder"]
    have = {k: list(v.shape) for k, v in build_backbone(arch, head_classes=1000).state_dict().items()}
    assert have == want


# torchvision's EfficientNet-B2/B3 (same layers: symmetric padding, squeeze-excite from the block
# input) with their 1000-class heads: num_params 9,109,994 and 12,233,232 (torchvision model docs,
# EfficientNet_B2_Weights / EfficientNet_B3_Weights).
@pytest.mark.parametrize("arch,count", [("efficientnet_b2", 9_109_994), ("efficientnet_b3", 12_233_232)])
def test_parameter_counts_match_published(arch, count):
    assert sum(p.numel() for p in build_backbone(arch, head_classes=1000).parameters()) == count


# EfficientNet paper (Tan & Le 2019), Table 2: B2 1.0B and B3 1.8B FLOPS (multiply-adds) at their
# native 260 / 300 inputs. gfpipe counts 0.992 G and 1.826 G for the backbone alone (torchvision
# lists 1.088 GFLOPS for B2 at 288 and 1.827 for B3 at 300, its 1.4-1.5 M-MAC classifier included).
@pytest.mark.parametrize("arch,size,gmacs", [("efficientnet_b2", 260, 1.0), ("efficientnet_b3", 300, 1.8)])
def test_macs_match_published_figures(arch, size, gmacs):
    cfg = GFNetConfig(backbone=arch, num_classes=1000, input_size=size, patch_size=size, T=1)
    assert part_costs(cfg).glance_encoder / 1e9 == pytest.approx(gmacs, rel=0.03)


def test_compound_scaling_rounds_like_timm():
    assert [round_channels(c, 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320, 1280)] == [
        32, 16, 24, 48, 88, 120, 208, 352, 1408,
    ]  # fmt: skip
    assert [round_channels(c, 1.2) for c in (32, 16, 112, 192, 1280)] == [40, 24, 136, 232, 1536]
    assert [round_repeats(r, 1.2) for r in (1, 2, 2, 3, 3, 4, 1)] == [2, 3, 3, 4, 4, 5, 2]
    assert [round_repeats(r, 1.4) for r in (1, 2, 2, 3, 3, 4, 1)] == [2, 3, 3, 5, 5, 6, 2]


def test_family_defaults_follow_training_spec():
    cfg = GFNetConfig(backbone="efficientnet_b3").resolved()
    assert (cfg.classifier, cfg.policy_conv_channels, cfg.policy_hidden) == ("cascade", 32, 256)
    assert (cfg.dropout, cfg.drop_connect) == (0.3, 0.2)
    train = resolve_config({"model": {"backbone": "efficientnet_b2"}})
    assert (train.stage1.epochs, train.stage1.encoder_lr, train.stage1.aux_weight) == (30, 0.005, 5.0)
    assert train.stage1.freeze_global and train.stage3.epochs == 0  # the paper skips stage III


def test_drop_connect_schedule_and_train_only():
    backbone = build_backbone("efficientnet_b2", drop_connect=0.2)
    rates = [block.drop_path for stage in backbone.blocks for block in stage]
    assert len(rates) == 23 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2 * 22 / 23)

    torch.manual_seed(0)
    block = MBConv(16, 96, 16, 3, 1, drop_path=0.5)
    x = torch.randn(32, 16, 8, 8)
    branch = block.eval()(x) - x  # (32, 16, 8, 8): eval is the plain residual block
    plain = MBConv(16, 96, 16, 3, 1).eval()
    plain.load_state_dict(block.state_dict())
    assert torch.equal(block(x), plain(x))
    block.train()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # running statistics, so only drop-connect differs from eval
    with torch.no_grad():
        out = block(x) - x
    dropped = out.flatten(1).abs().amax(1) == 0
    assert 0 < dropped.sum() < len(x)
    torch.testing.assert_close(out[~dropped], branch[~dropped] / 0.5)


@pytest.mark.parametrize("patch", [128, 144])
def test_official_b3_file_loads_strictly_and_runs_at_300(patch):
    ckpt = official_checkpoint("efficientnet_b3", patch_size=patch, T=4, rule=2)
    side = math.ceil(patch / 32)
    assert list(ckpt["policy"]["state_encoder.3.weight"].shape) == [256, 32 * side**2]  # (256, 800) at 144
    model = gfpipe.load_checkpoint(_file(ckpt))
    cfg, prep = model.config, model.card.preprocessing
    assert (cfg.input_size, cfg.patch_size, cfg.T, cfg.glance_interpolation) == (300, patch, 4, "bicubic")
    assert (prep.resize, prep.crop, prep.interpolation) == (331, 300, "bicubic")
    x = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, state = model.glance(x)
        # Step 1 is the global encoder's own classifier on its pooled features (inference.py).
        pooled, _ = model.global_encoder(model.glance_input(x))
        torch.testing.assert_close(logits, model.global_encoder.classifier(pooled))
        steps = [logits]
        for _ in range(3):
            logits, state = model.focus(x, state)
            steps.append(logits)
    assert all(s.shape == (2, 1000) and torch.isfinite(s).all() for s in steps)
    assert state.features.shape == (2, 1536, side, side)


def test_official_b2_imports_with_its_inference_input():
    model = gfpipe.load_checkpoint(_file(official_checkpoint("efficientnet_b2", patch_size=128, T=2)))
    prep = model.card.preprocessing
    assert model.config.input_size == 260 and (prep.resize, prep.crop, prep.interpolation) == (297, 260, "bicubic")


def test_cascade_beyond_five_steps_is_refused():
    raw = _file(official_checkpoint("efficientnet_b2", patch_size=128, metadata=False))
    with pytest.raises(CheckpointError, match=r"fc_2\.\.fc_5, so T <= 5"):
        gfpipe.load_checkpoint(raw, arch="efficientnet_b2", patch_size=128, T=6)


def test_engine_gives_the_official_answers():
    assert_engine_matches_reference("efficientnet_b2_p128_T4_seed0_rule2.json")


# The model-core sweep for the new backbones, on small inputs (fast): shapes, no NaN, costs that
# grow with every step, and a gfpipe checkpoint round trip.
@pytest.mark.parametrize("arch", [*ARCHS, "mobilenetv3_large_125"])
def test_new_backbones_in_the_model_core(arch):
    torch.manual_seed(0)
    backbone = build_backbone(arch, head_classes=5).eval()
    with torch.no_grad():
        pooled, fmap = backbone(torch.randn(2, 3, 70, 70))
    assert pooled.shape == (2, backbone.feature_dim) and torch.isfinite(pooled).all()
    assert fmap.shape == (2, backbone.map_channels, 3, 3) and backbone.map_size(70) == 3

    model = GFNet(GFNetConfig(backbone=arch, num_classes=5, input_size=64, patch_size=32, T=3)).eval()
    costs = gfpipe.step_costs(model)
    assert len(costs) == 3 and costs[0] < costs[1] < costs[2]
    x = torch.randn(2, 3, 64, 64)
    logits = model.anytime(x)
    assert logits.shape == (3, 2, 5) and torch.isfinite(logits).all()
    buf = io.BytesIO()
    gfpipe.save_checkpoint(model, buf)
    again = gfpipe.load_checkpoint(buf.getvalue())
    assert again.config == model.config
    torch.testing.assert_close(again.anytime(x), logits, rtol=0, atol=0)
