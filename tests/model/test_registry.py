"""Every registered backbone, as a whole GFNet: one sweep over the registry (small inputs), so a
new backbone is covered the moment it is registered."""

from __future__ import annotations

import io

import pytest
import torch

import gfpipe
from gfpipe.model import GFNet, GFNetConfig
from gfpipe.model.backbones import BACKBONES


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_runs_costs_and_round_trips_as_a_gfnet(name):
    torch.manual_seed(0)
    config = GFNetConfig(backbone=name, num_classes=10, input_size=64, patch_size=32, T=3, tiny_width=8)
    model = GFNet(config).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, actions = model.anytime(x, return_locations=True)
    assert logits.shape == (3, 2, 10) and actions.shape == (2, 2, 2)
    assert torch.isfinite(logits).all() and ((actions >= 0) & (actions <= 1)).all()
    costs = gfpipe.step_costs(model)
    assert len(costs) == 3 and 0 < costs[0] < costs[1] < costs[2]
    buffer = io.BytesIO()
    gfpipe.save_checkpoint(model, buffer)
    loaded = gfpipe.load_checkpoint(buffer.getvalue())
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.anytime(x), logits)
