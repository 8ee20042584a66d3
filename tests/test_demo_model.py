"""The demo model that ships with gfpipe: loadable by name, self-describing, and its focus steps
really add accuracy over its glance on glyphs it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import gfpipe
from gfpipe.checkpoint import builtin_path
from gfpipe.cli import main
from gfpipe.data.synthetic import SynthConfig, write_dataset
from gfpipe.engine import EarlyExitEngine, batched
from gfpipe.evaluate import calibration_scores


def test_the_demo_loads_by_name_and_carries_what_the_jobs_need():
    path = Path(builtin_path("demo"))
    assert path.is_file() and path.stat().st_size < 5 * 2**20  # package data, at most 5 MB
    model = gfpipe.load_checkpoint("demo")
    assert model.class_names == tuple("0123456789")
    assert (model.config.input_size, model.config.glance_size, model.config.patch_size, model.config.T) == (
        128,
        48,
        64,
        3,
    )
    scores = calibration_scores(model)
    assert scores is not None and scores.shape[1] == 3 and len(scores) >= 1000 and np.isfinite(scores).all()
    assert "validation data" in model.card.calibration["source"]
    assert model.card.provenance["train_config"]["run"]["name"] == "demo"


def test_a_local_file_named_demo_wins(tmp_path, monkeypatch):
    torch.manual_seed(0)
    other = gfpipe.GFNet(gfpipe.GFNetConfig(backbone="tiny", tiny_width=4, num_classes=3, input_size=64, patch_size=32))
    gfpipe.save_checkpoint(other, str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    assert gfpipe.load_checkpoint("demo").config.num_classes == 3


def test_the_demos_focus_steps_add_accuracy_on_unseen_glyphs(tmp_path, capsys):
    """A test split with a seed the demo was neither trained nor calibrated on."""
    write_dataset(str(tmp_path / "glyphs"), "test", 300, SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=7))
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                "demo",
                "--data",
                str(tmp_path / "glyphs" / "test"),
                "--out",
                str(tmp_path / "eval"),
                "--points",
                "5",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "eval" / "evaluate.json").read_text())
    glance, *focus = result["anytime_accuracy"]
    assert glance > 0.3 and focus[-1] > glance + 0.12, result["anytime_accuracy"]
    # and it runs in the engine at a budget solved from its own calibration
    model = gfpipe.load_checkpoint("demo")
    costs = gfpipe.step_costs(model)
    from gfpipe.budget import solve_thresholds

    eta = solve_thresholds(costs, calibration_scores(model), costs[0] + 0.5 * (costs[-1] - costs[0])).thresholds
    x = torch.randn(16, 3, 128, 128)
    rows = list(EarlyExitEngine(model, eta, batch_size=8).run(batched([str(i) for i in range(16)], x, 8)))
    assert len(rows) == 16 and all(r["error"] is None for r in rows)
