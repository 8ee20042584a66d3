"""`gfpipe evaluate` end to end on cluttered-glyph shards, checked against the real engine."""

import json

import numpy as np
import pytest
import torch

import gfpipe
from gfpipe.budget.scores import scores_from_confidences
from gfpipe.budget.solver import solve_thresholds
from gfpipe.cli import main
from gfpipe.data import read_images
from gfpipe.data.decode import preprocess
from gfpipe.data.synthetic import SYNTH_PREPROCESSING, SynthConfig, write_dataset
from gfpipe.engine import EarlyExitEngine
from gfpipe.model import GFNet, GFNetConfig, ModelCard


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity tokens, as strict parsers in other languages do."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


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
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "m.pt"),
                "--data",
                str(tmp_path / "data" / "val"),
                "--out",
                str(out),
                "--batch-size",
                "16",
                "--points",
                "5",
            ]
        )
        == 0
    )
    result = strict_json((out / "evaluate.json").read_text())
    assert (out / "accuracy_vs_macs.png").stat().st_size > 1000
    assert result["images"] == result["labelled"] == 48 and result["errors"]["total"] == 0
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
    engine = EarlyExitEngine(model, [float(x) for x in middle["thresholds"]], batch_size=16)
    rows = list(engine.run([([r["key"] for r in records], images)]))
    assert engine.stats.exits == middle["exits"]
    assert np.mean([r["macs"] for r in rows]) == middle["mean_macs"]


@pytest.mark.parametrize("stored", ["scores", "confidences"])
def test_thresholds_come_from_checkpoint_calibration_when_present(tmp_path, stored):
    """Checkpoints store exit scores; older ones max-softmax confidences, which are converted."""
    write_dataset(str(tmp_path / "data"), "test", 16, SynthConfig(seed=2), formats=("parquet",))
    values = torch.rand(200, 3) if stored == "confidences" else torch.randn(200, 3) * 3
    tiny_checkpoint(tmp_path / "m.pt", {stored: values})
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "m.pt"),
                "--data",
                str(tmp_path / "data" / "test"),
                "--out",
                str(out),
                "--points",
                "3",
            ]
        )
        == 0
    )
    result = strict_json((out / "evaluate.json").read_text())
    assert result["threshold_source"] == "checkpoint calibration"
    middle = result["budgeted"][1]
    scores = values.numpy() if stored == "scores" else scores_from_confidences(values)
    expected = solve_thresholds(result["step_macs"], scores, middle["target_macs"]).thresholds
    assert [float(x) for x in middle["thresholds"]] == pytest.approx(expected.tolist())


def test_evaluate_writes_to_s3_and_nowhere_else(tmp_path, s3_server, monkeypatch):
    write_dataset(str(tmp_path / "data"), "val", 8, SynthConfig(seed=4))
    tiny_checkpoint(tmp_path / "m.pt")
    bucket = s3_server.make_bucket("eval")
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                "m.pt",
                "--data",
                "data/val",
                "--out",
                f"s3://{bucket}/run1",
                "--points",
                "3",
                "--endpoint-url",
                s3_server.endpoint_url,
                "--storage-options",
                json.dumps({"key": "testing", "secret": "testing"}),
            ]
        )
        == 0
    )
    assert not (tmp_path / "s3:").exists()
    from gfpipe.data.io import read_bytes

    result = strict_json(read_bytes(f"s3://{bucket}/run1/evaluate.json", s3_server.storage_options).decode())
    assert result["images"] == 8
    assert read_bytes(f"s3://{bucket}/run1/accuracy_vs_macs.png", s3_server.storage_options)[:4] == b"\x89PNG"


def test_class_folders_give_labels_by_name_and_unknown_folders_are_refused(tmp_path, capsys):
    from PIL import Image

    from gfpipe.data.synthetic import generate

    for sample in generate(12, "val", SynthConfig(seed=5)):
        folder = tmp_path / "folders" / "0123456789"[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(folder / f"{sample.index}.png")
    model = tiny_checkpoint(tmp_path / "m.pt")
    args = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "m.pt"),
        "--data",
        str(tmp_path / "folders"),
        "--out",
        str(tmp_path / "eval"),
        "--points",
        "3",
    ]
    assert main(args + ["--class-folders"]) == 0
    result = strict_json((tmp_path / "eval" / "evaluate.json").read_text())
    assert result["images"] == result["labelled"] == 12
    # The labels are the folders' names mapped to the model's classes: check one step exactly.
    records = [r for r in read_images(str(tmp_path / "folders"), class_folders=True, class_names=model.class_names)]
    images = torch.from_numpy(np.stack([preprocess(r["image"], SYNTH_PREPROCESSING) for r in records]))
    predictions = model.anytime(images).argmax(-1)  # (T, N)
    truth = torch.tensor([int(r["key"].split("/")[-2]) for r in records])
    assert result["anytime_accuracy"] == pytest.approx((predictions == truth).float().mean(1).tolist())

    (tmp_path / "folders" / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "folders" / "cat" / "x.png")
    assert main(args + ["--class-folders"]) == 2
    assert "cat" in capsys.readouterr().err


def test_unreadable_images_are_counted_with_their_reasons(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, sample in enumerate(generate_few(3)):
        Image.fromarray(sample.image).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"<html>not an image</html>")
    tiny_checkpoint(tmp_path / "m.pt")
    args = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "m.pt"),
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "e"),
        "--points",
        "2",
    ]
    assert main(args) == 0
    result = strict_json((tmp_path / "e" / "evaluate.json").read_text())
    assert result["images"] == 3 and result["errors"]["total"] == 1
    assert result["errors"]["examples"][0]["error"] == "not an image: HTML page"
    assert "broken.jpg: not an image: HTML page" in capsys.readouterr().out
    for i in range(3):
        (folder / f"ok{i}.png").unlink()
    assert main(args) == 2
    assert "broken.jpg: not an image: HTML page" in capsys.readouterr().err


def generate_few(n: int):
    from gfpipe.data.synthetic import generate

    return list(generate(n, "val", SynthConfig(seed=6)))


def test_a_user_budget_is_reported_and_an_infeasible_one_is_a_clean_error(tmp_path, capsys):
    write_dataset(str(tmp_path / "data"), "val", 24, SynthConfig(seed=3), formats=("wds",))
    model = tiny_checkpoint(tmp_path / "m.pt")
    costs = gfpipe.step_costs(model)
    args = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "m.pt"),
        "--data",
        str(tmp_path / "data" / "val"),
        "--out",
        str(tmp_path / "eval"),
        "--points",
        "3",
    ]
    middle = (costs[0] + costs[-1]) / 2
    assert main(args + ["--budget", f"{middle / 1e6:.3f}M"]) == 0
    chosen = json.loads((tmp_path / "eval" / "evaluate.json").read_text())["at_budget"]
    assert chosen["budget"].startswith("--budget ") and not chosen["clamped"]
    assert chosen["target"] == np.float64(round(middle / 1e6, 3) * 1e6)
    assert sum(chosen["exits"]) == 24 and costs[0] <= chosen["mean_macs"] <= costs[-1]
    assert main(args + ["--budget", "1K"]) == 2
    assert "below the glance-only cost" in capsys.readouterr().err
