import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import gfpipe
from gfpipe.budget.costs import measure_step_seconds, part_costs
from gfpipe.model import GFNet, GFNetConfig


def config(backbone: str, size: int, patch: int = 96, T: int = 5) -> GFNetConfig:
    return GFNetConfig(backbone=backbone, num_classes=1000, input_size=size, patch_size=patch, glance_size=size, T=T)


@pytest.mark.parametrize(
    "backbone,size,gmacs",
    [
        ("resnet50", 224, 4.09),
        ("resnet50", 96, 0.75),
        ("mobilenetv3_large_100", 224, 0.215),
        ("mobilenetv3_large_100", 96, 0.042),
    ],
)
def test_encoder_macs_match_published_figures(backbone, size, gmacs):
    counted = part_costs(config(backbone, size, patch=size)).glance_encoder / 1e9
    assert counted == pytest.approx(gmacs, rel=0.02)


def test_official_resnet50_p96_t5_costs():
    costs = gfpipe.step_costs(GFNetConfig(backbone="resnet50", num_classes=1000, patch_size=96, T=5))
    assert len(costs) == 5
    assert costs[0] / 1e9 == pytest.approx(0.76, abs=0.01)
    assert costs[-1] / 1e9 == pytest.approx(3.99, abs=0.01)
    assert all(b > a for a, b in itertools.pairwise(costs))


@pytest.mark.parametrize("classifier", ["gru", "cascade"])
def test_parts_add_up_to_what_a_real_step_spends(classifier):
    """Counting parts on `meta` equals counting the real glance/focus calls of a real model."""
    torch.manual_seed(0)
    model = GFNet(
        GFNetConfig(backbone="tiny", tiny_width=4, input_size=64, patch_size=32, T=3, classifier=classifier)
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    spent = []
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            _, state = model.glance(x)
        spent.append(counter.get_total_flops() / 2)
        for _ in range(2):
            with FlopCounterMode(display=False) as counter:
                _, state = model.focus(x, state)
            spent.append(spent[-1] + counter.get_total_flops() / 2)
    assert gfpipe.step_costs(model) == pytest.approx(spent, rel=1e-9)
    parts = part_costs(model)
    if classifier == "cascade":
        assert parts.classifier[2] > parts.classifier[1] > parts.classifier[0]
    else:
        assert parts.classifier[0] == parts.classifier[2]


def test_measured_seconds_are_cumulative_per_image():
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="tiny", tiny_width=4, input_size=64, patch_size=32, T=3))
    seconds = measure_step_seconds(model, batch_size=4, warmup=0, repeats=1)
    assert len(seconds) == 3 and all(b > a > 0 for a, b in itertools.pairwise(seconds))
