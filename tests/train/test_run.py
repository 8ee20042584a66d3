"""Training on a real local Ray (2 CPUs, 2 Ray Train workers): every stage, a worker killed
mid-epoch, the final checkpoint in use, a finished run, and a driver killed between epochs with
data, run storage and output on S3.

The model is the tiny one of configs/test-tiny.yaml (64 px input, T = 3); each run takes seconds
of training and most of its time in Ray's own start-up and reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gfpipe
from gfpipe.data import read_images
from gfpipe.data.decode import preprocess_batch
from gfpipe.data.io import filesystem
from gfpipe.model.gfnet import GFNet
from gfpipe.train.config import load_config
from gfpipe.train.run import DONE_RECORD, FAULT_ENV, train

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "test-tiny.yaml"


def tiny_config(glyphs: Path, storage: Path | str, *sets: str):
    return load_config(
        str(TINY_CONFIG),
        [f"data.train={glyphs / 'train'}", f"data.val={glyphs / 'val'}", f"run.storage={storage}", *sets],
    )


def visits(history: list[dict]) -> list[tuple[str, int]]:
    return [(h["stage"], h["epoch"]) for h in history]


def test_every_stage_on_two_workers_survives_a_killed_worker_and_the_checkpoint_serves(
    ray_local, glyphs, tmp_path, monkeypatch
):
    """One run, all four stages on two workers; rank 1 dies mid-way through stage I's epoch
    (once), so the group restarts from stage 0's checkpoint (run.max_failures)."""
    import ray

    from gfpipe.budget.solver import solve_thresholds
    from gfpipe.engine import EarlyExitEngine
    from gfpipe.evaluate import evaluate

    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"kill-worker:rank=1:stage=stage1:epoch=0:marker={marker}")
    config = tiny_config(glyphs, tmp_path / "runs")
    out = train(config)
    assert out == str(tmp_path / "runs" / "test-tiny" / "model.pt")

    model = gfpipe.load_checkpoint(out)
    provenance = model.card.provenance
    history = provenance["history"]
    assert visits(history) == [("stage0", 0), ("stage1", 0), ("stage2", 0), ("stage3", 0)]
    # Both workers together train on each training image once per epoch (48), and validate on
    # every validation image once (15: an uneven split must not drop or repeat one).
    assert [h["train_images"] for h in history] == [48] * 4
    assert [h["val_images"] for h in history] == [15] * 4
    # (Epochs alternate between two copies of the training split, each read ahead: a wrong copy
    # would cut the epoch it replaced, and the counts above would fall short.)
    assert all(h["first_batch_seconds"] >= 0 for h in history)
    assert all(len(h["val_accuracy"]) == 3 for h in history)
    assert set(provenance["stages"]) == {"stage0", "stage1", "stage2", "stage3"}
    assert provenance["ray_version"] == ray.__version__ and provenance["run"] == "test-tiny"
    assert provenance["train_config"]["model"]["num_classes"] == 10
    assert model.class_names == tuple("0123456789")

    # The killed worker: stage 0 ran once, before the failure; the restarted group loaded its
    # checkpoint (resumes 1) and went on with stage I, not from the start.
    assert marker.exists(), "the fault did not fire"
    assert [h["resumes"] for h in history] == [0, 1, 1, 1]
    assert len({h["launch"] for h in history}) == 1

    # Calibration: every held-out image once, with its true label.
    calibration = model.card.calibration
    truth = sorted(int(r["label"]) for r in read_images(str(glyphs / "val")))
    assert calibration["scores"].shape == (15, 3) and calibration["scores"].dtype == torch.float32
    assert sorted(calibration["labels"].tolist()) == truth
    assert calibration["predictions"].shape == (15, 3)
    assert "15 images" in calibration["source"]

    # Each part of the model was trained: its parameters left the seeded initialisation.
    torch.manual_seed(config.seed)
    start = GFNet(model.config, model.card)
    for part in ("global_encoder", "local_encoder", "classifier", "policy"):
        before = dict(getattr(start, part).named_parameters())
        moved = [n for n, p in getattr(model, part).named_parameters() if not torch.equal(p, before[n])]
        assert moved, f"{part} did not train"

    # The checkpoint in use: evaluation with its own calibration, and the early-exit engine.
    result = evaluate(model, read_images(str(glyphs / "val")), batch_size=8, points=3)
    assert result["images"] == 15 and result["threshold_source"] == "checkpoint calibration"
    costs = gfpipe.step_costs(model)
    assert len(costs) == 3 and costs[0] < costs[1] < costs[2]
    solution = solve_thresholds(costs, calibration["scores"].numpy(), (costs[0] + costs[2]) / 2)
    images = preprocess_batch([r["image"] for r in read_images(str(glyphs / "val"))], model.card.preprocessing)
    rows = list(EarlyExitEngine(model, solution.thresholds, batch_size=4).run([(list(range(15)), images)]))
    assert sorted(r["key"] for r in rows) == list(range(15)) and all(r["error"] is None for r in rows)

    # The run folder: the last two checkpoints (run.keep_checkpoints) and the records.
    run_dir = tmp_path / "runs" / "test-tiny"
    assert len([p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]) == 2
    assert json.loads((run_dir / DONE_RECORD).read_text())["output"] == out

    # Running the same finished run again trains nothing and points at the same file.
    written = os.stat(out).st_mtime_ns
    assert train(config) == out
    assert os.stat(out).st_mtime_ns == written


def gfpipe_train(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gfpipe.cli", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_a_rerun_after_the_driver_died_resumes_with_everything_on_s3(ray_local, s3_server, tmp_path):
    """Data, run storage and the final model on S3; the driver (`gfpipe train` connected to the
    cluster) is killed after stage I's checkpoint; the same command again finishes the run
    without repeating a done epoch."""
    from gfpipe.data.synthetic import SynthConfig, write_dataset

    options = s3_server.storage_options
    bucket = s3_server.make_bucket("train")
    data = f"s3://{bucket}/glyphs"
    write_dataset(data, "train", 32, SynthConfig(image_size=64, seed=0), shard_size=16, storage_options=options)
    write_dataset(data, "val", 8, SynthConfig(image_size=64, seed=0), shard_size=8, storage_options=options)
    args = [
        "--config",
        str(TINY_CONFIG),
        "--train",
        f"{data}/train",
        "--val",
        f"{data}/val",
        "--storage",
        f"s3://{bucket}/runs",
        "--name",
        "s3run",
        "--endpoint-url",
        s3_server.endpoint_url,
        "--storage-options",
        json.dumps({"key": options["key"], "secret": options["secret"]}),
    ]
    cluster = {"RAY_ADDRESS": ray_local}
    first = gfpipe_train(args, {**cluster, FAULT_ENV: "kill-driver:stage=stage1:epoch=0"}, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr[-4000:]
    fs, _ = filesystem(f"s3://{bucket}", options)
    run_dir = f"{bucket}/runs/s3run"
    assert not fs.exists(f"{run_dir}/{DONE_RECORD}")

    second = gfpipe_train(args, cluster, tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    out = f"s3://{bucket}/runs/s3run/model.pt"
    assert second.stdout.strip().splitlines()[-1] == f"wrote {out}"  # (Ray's raylet may print before it)
    history = gfpipe.load_checkpoint(out, storage_options=options).card.provenance["history"]
    assert visits(history) == [("stage0", 0), ("stage1", 0), ("stage2", 0), ("stage3", 0)]
    launches = [h["launch"] for h in history]
    assert launches[0] == launches[1] != launches[2] == launches[3]
    assert [h["resumes"] for h in history] == [0, 0, 1, 1]
    assert [h["train_images"] for h in history] == [32] * 4

    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(run_dir, detail=False)}
    assert {"model.pt", DONE_RECORD, "gfpipe-run.json", "checkpoint_manager_snapshot.json"} <= names
    assert sum(n.startswith("checkpoint_2") for n in names) == 2  # run.keep_checkpoints
