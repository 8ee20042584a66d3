"""RegNet-Y-600MF/800MF/1.6GF: pycls's layout, official GFNet files, counted Multiply-Adds, and
the glance logits from the global encoder's own head (`GFNetConfig.glance_logits`).

The official reference vectors (regnety_600m p96 T5) are reproduced in test_official_reference.py.
"""

import dataclasses
import io
import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import gfpipe
from gfpipe.budget.costs import part_costs
from gfpipe.config import ConfigError
from gfpipe.model import GFNet, GFNetConfig, build_backbone

from .official_files import assert_official_file_loads_and_runs, official_checkpoint, reference_input

ARCHS = ["regnety_600m", "regnety_800m", "regnety_1.6g"]
WIDTH = {"regnety_600m": 608, "regnety_800m": 768, "regnety_1.6g": 888}
# pycls MODEL_ZOO.md, RegNetY table: params (M) and flops (B; pycls counts multiply-adds), both
# with the 1000-class head, at 224; the names' 600MF / 800MF / 1.6GF are the same figures.
PUBLISHED = {"regnety_600m": (6.1, 0.6), "regnety_800m": (6.3, 0.8), "regnety_1.6g": (11.2, 1.6)}


def as_file(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def tiny(**kw) -> GFNet:
    torch.manual_seed(0)
    cfg = dict(backbone="tiny", tiny_width=4, num_classes=6, input_size=64, patch_size=32, T=3)
    cfg.update(kw)
    return GFNet(GFNetConfig(**cfg)).eval()


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_counts_match_pycls(name):
    backbone = build_backbone(name, head_classes=1000)
    assert round(sum(p.numel() for p in backbone.parameters()) / 1e6, 1) == PUBLISHED[name][0]
    assert backbone.head is backbone.fc  # pycls's (and the official files') name


@pytest.mark.parametrize("name", ARCHS)
def test_macs_at_224_match_published(name):
    cfg = GFNetConfig(backbone=name, num_classes=1000, input_size=224, patch_size=224, T=1)
    counted = part_costs(cfg).glance_encoder / 1e9
    assert counted == pytest.approx(PUBLISHED[name][1], rel=0.03)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("size", [64, 100])
def test_returns_pooled_and_feature_map(name, size):
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        pooled, fmap = backbone(torch.randn(2, 3, size, size))
    side = -(-size // 32)
    assert backbone.map_size(size) == side
    assert pooled.shape == (2, WIDTH[name]) and fmap.shape == (2, WIDTH[name], side, side)
    assert torch.isfinite(fmap).all() and torch.allclose(pooled, fmap.mean((2, 3)), atol=1e-6)


def test_family_defaults():
    cfg = GFNetConfig(backbone="regnety_800m").resolved()
    assert (cfg.classifier, cfg.classifier_hidden, cfg.glance_logits) == ("gru", 1024, "encoder_head")
    assert (cfg.policy_conv_channels, cfg.policy_hidden) == (32, 256)


def test_step_costs_increase_and_the_glance_counts_the_encoder_head():
    cfg = GFNetConfig(backbone="regnety_600m", num_classes=1000, patch_size=96, T=5)
    costs = gfpipe.step_costs(cfg)
    assert len(costs) == 5 and all(b > a for a, b in itertools.pairwise(costs))
    parts = part_costs(cfg)
    # Step 1: GRU update + the encoder's fc (608 -> 1000); later steps: GRU + its fc (1024 -> 1000).
    assert parts.classifier[0] - parts.classifier[1] == (608 - 1024) * 1000


# The three sizes share one code path (widths, depths and group widths differ) and each is
# loaded strictly from official files below, so the whole-model round trip runs on the smallest.


def test_a_regnet_gfnet_keeps_the_global_encoders_head_only():
    """Step 1's logits come from the global encoder's `fc` (glance_logits); the local encoder has
    none. (The checkpoint round trip of every backbone is tests/model/test_registry.py's.)"""
    model = GFNet(GFNetConfig(backbone="regnety_600m", num_classes=5, input_size=64, patch_size=32, T=3))
    assert model.global_encoder.fc is not None and model.local_encoder.fc is None  # see glance_logits


@pytest.mark.parametrize("name", ["regnety_800m", "regnety_1.6g"])
def test_official_files_load_strictly_and_run(name):
    """Keys and shapes from checkpoint_keys.json load strictly and run (the first variant is
    checked against reference vectors)."""
    cfg = assert_official_file_loads_and_runs(name, "fc.weight", WIDTH[name]).config
    assert (cfg.glance_interpolation, cfg.glance_logits) == ("bilinear", "encoder_head")


@torch.no_grad()
def test_glance_logits_come_from_the_global_encoders_fc_and_the_gru_still_sees_the_glance():
    """inference.py: step 1 = model_prime.fc(pooled), while fc(pooled, restart=True) still runs."""
    model = gfpipe.load_checkpoint(as_file(official_checkpoint("regnety_600m", patch_size=96, T=3)))
    x = reference_input(0, 2)
    logits = model.anytime(x)
    pooled, _ = model.global_encoder(model.glance_input(x))
    assert torch.equal(logits[0], model.global_encoder.fc(pooled))

    gru = GFNet(dataclasses.replace(model.config, glance_logits="classifier"), model.card).eval()
    gru.load_state_dict(model.state_dict())
    other = gru.anytime(x)
    assert torch.equal(other[1:], logits[1:])  # the same history from step 2 on
    assert (other[0] - logits[0]).abs().max() > 0.1  # ... but step 1 reads another layer


def test_encoder_head_glance_builds_the_global_head_and_counts_what_runs():
    model = tiny(glance_logits="encoder_head")
    assert model.global_encoder.head is not None and model.local_encoder.head is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        logits, state = model.glance(x)
    assert torch.equal(logits, model.global_encoder.head(state.pooled))
    assert gfpipe.step_costs(model)[0] == counter.get_total_flops() / 2


def test_unknown_glance_logits_is_refused():
    with pytest.raises(ConfigError, match="glance_logits must be 'classifier' or 'encoder_head', got 'fc'"):
        GFNetConfig(glance_logits="fc").resolved()
