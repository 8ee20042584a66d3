"""`gfpipe evaluate` end to end on cluttered-glyph shards, checked against the real engine."""

import json

import numpy as np
import torch

import gfpipe
from gfpipe.cli import main
from gfpipe.data import read_images
from gfpipe.data.decode import preprocess
from gfpipe.data.synthetic import SYNTH_PREPROCESSING, SynthConfig, write_dataset
from gfpipe.engine import EarlyExitEngine
from gfpipe.model import GFNet, GFNetConfig, ModelCard


def tiny_checkpoint(path, calibration=None) -> GFNet:
    torch.manual_seed(0)
    card = ModelCard(class_names=tuple("0123456789"), preprocessing=SYNTH_PREPROCESSING, calibration=calibration)
    model = GFNet(GFNetConfig(backbone="tiny", tiny_width=4, num_classes=10, input_size=224, patch_size=96, T=3), card)
    torch.nn.init.normal_(model.classifier.fc.weight, 0, 1.0)  # confidences that vary per image
    gfpipe.save_checkpoint(model, str(path))
    return model.eval()


def test_evaluate_writes_table_json_and_plot(tmp_path, capsys):
    write_dataset(str(tmp_path / "data"), "val", 48, SynthConfig(seed=1), formats=("wds",), shard_size=20)
    model = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "data" / "val"),
                 "--out", str(out), "--batch-size", "16", "--points", "5"]) == 0
    result = json.loads((out / "evaluate.json").read_text())
    assert (out / "accuracy_vs_macs.png").stat().st_size > 1000
    assert result["images"] == result["labelled"] == 48 and result["errors"] == 0
    assert len(result["anytime_accuracy"]) == 3 and all(0 <= a <= 1 for a in result["anytime_accuracy"])
    costs = gfpipe.step_costs(model)
    budgeted = result["budgeted"]
    assert len(budgeted) == 5 and budgeted[0]["target_macs"] == costs[0] and budgeted[-1]["target_macs"] == costs[-1]
    assert budgeted[0]["exits"] == [48, 0, 0] and budgeted[-1]["exits"] == [0, 0, 48]
    assert all(sum(r["exits"]) == 48 for r in budgeted)
    assert "evaluation data" in result["threshold_source"]
    printed = capsys.readouterr().out
    assert "anytime accuracy" in printed and "exits per step" in printed

    # The simulated exits are what the engine really does with those thresholds.
    middle = budgeted[2]
    records = list(read_images(str(tmp_path / "data" / "val")))
    images = torch.from_numpy(np.stack([preprocess(r["image"], SYNTH_PREPROCESSING) for r in records]))
    engine = EarlyExitEngine(model, middle["thresholds"], batch_size=16)
    rows = list(engine.run([([r["key"] for r in records], images)]))
    assert engine.stats.exits == middle["exits"]
    assert np.mean([r["macs"] for r in rows]) == middle["mean_macs"]


def test_thresholds_come_from_checkpoint_calibration_when_present(tmp_path):
    write_dataset(str(tmp_path / "data"), "test", 16, SynthConfig(seed=2), formats=("parquet",))
    calibration = {"confidences": torch.rand(200, 3)}
    tiny_checkpoint(tmp_path / "m.pt", calibration)
    out = tmp_path / "eval"
    main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "data" / "test"),
          "--out", str(out), "--points", "3"])
    assert json.loads((out / "evaluate.json").read_text())["threshold_source"] == "checkpoint calibration"


def test_a_user_budget_is_reported_and_an_infeasible_one_is_a_clean_error(tmp_path, caplog):
    write_dataset(str(tmp_path / "data"), "val", 24, SynthConfig(seed=3), formats=("wds",))
    model = tiny_checkpoint(tmp_path / "m.pt")
    costs = gfpipe.step_costs(model)
    args = ["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "data" / "val"),
            "--out", str(tmp_path / "eval"), "--points", "3"]
    middle = (costs[0] + costs[-1]) / 2
    assert main(args + ["--budget", f"{middle / 1e6:.3f}M"]) == 0
    chosen = json.loads((tmp_path / "eval" / "evaluate.json").read_text())["at_budget"]
    assert chosen["budget"].startswith("--budget ") and not chosen["clamped"]
    assert chosen["target"] == np.float64(round(middle / 1e6, 3) * 1e6)
    assert sum(chosen["exits"]) == 24 and costs[0] <= chosen["mean_macs"] <= costs[-1]
    assert main(args + ["--budget", "1K"]) == 2
    assert "below the glance-only cost" in caplog.text
