"""The classify job end to end on a real local Ray: every image exactly once (errors included),
resume and nightly runs, a killed actor, a killed driver, S3 to S3, and the budget as a ceiling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gfpipe.budget.grammar import parse_budget
from gfpipe.classify.config import ClassifyConfig
from gfpipe.classify.parts import read_rows
from gfpipe.classify.replica import FAULT_ENV
from gfpipe.data import discover_shards, iter_shard_records
from gfpipe.pipeline import classify

from .conftest import write_archive

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run(input_uri: str, output: str, budget: str = "9M", **settings) -> dict:
    kind = "time" if budget[-1] in "hms" else "mean"
    config = ClassifyConfig(
        input=input_uri, output=output, budget=parse_budget(budget, kind), **{"progress_seconds": 60.0, **settings}
    )
    return classify(config)


def input_keys(uri: str, options: dict | None = None) -> list[str]:
    return [r.key for s in discover_shards(uri, options) for r in iter_shard_records(s, options)]


def assert_exactly_once(output: str, uri: str, options: dict | None = None) -> list[dict]:
    rows = read_rows(output, options).to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a row is duplicated"
    assert sorted(keys) == sorted(input_keys(uri, options)), "rows and input images differ"
    return rows


def test_every_image_once_then_resume_nightly_changed_shards_and_overwrite(ray_local, tmp_path):
    manifest = write_archive(tmp_path / "in", "test", 300, 100, corrupt=5)
    data, out = str(tmp_path / "in" / "test"), str(tmp_path / "out")

    summary = run(data, out, batch_size=32, batches_per_call=2)
    rows = assert_exactly_once(out, data)
    by_key = {r["key"].rsplit("#", 1)[1]: r for r in rows}
    corrupt = set(manifest["corrupt_keys"])
    assert {k for k, r in by_key.items() if r["error"] is not None} == corrupt
    costs = summary["step_macs"]
    for key, row in by_key.items():
        if key in corrupt:
            assert row["exit_step"] == 0 and row["macs"] == 0 and row["label"] is None
            continue
        t = row["exit_step"]
        assert 1 <= t <= 3 and row["macs"] == costs[t - 1] and len(row["glimpses"]) == t - 1
        assert row["label_name"] == str(row["label"]) and row["topk_labels"][0] == row["label"]
        assert (row["width"], row["height"]) == (128, 128) and row["node"] and row["run_id"] == summary["run_id"]
    assert summary["images"] == 300 and summary["errors"] == 5 and sum(summary["exits"]) == 295
    assert sum(summary["errors_by_reason"].values()) == 5
    spent = sum(r["macs"] for r in rows)
    assert summary["budget"]["total_macs"] == pytest.approx(spent)
    assert summary["budget"]["realized_macs_per_image"] == pytest.approx(spent / 295)
    assert summary["shards"] == {
        "total": 3,
        "classified": 3,
        "skipped_done": 0,
        "redone_changed": 0,
        "redone_changed_uris": [],
        "split_for_reading": {},
    }
    written = json.loads((tmp_path / "out" / "_gfpipe" / "summary.json").read_text())
    assert written["run_id"] == summary["run_id"] and written["exits"] == summary["exits"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4  # exits, cost, confidence, glimpses

    # The same command again: nothing is classified, nothing duplicated, the totals stand.
    parts = sorted(p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("part-*.parquet"))
    again = run(data, out)
    assert again["shards"]["classified"] == 0 and again["shards"]["skipped_done"] == 3
    assert again["images"] == 300 and again["exits"] == summary["exits"]
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("part-*.parquet")) == parts

    # Nightly: a new shard appears; only it is classified.
    write_archive(tmp_path / "more", "test", 60, 60)
    shutil.copy(tmp_path / "more" / "test" / "shard-000000.tar", tmp_path / "in" / "test" / "shard-000003.tar")
    nightly = run(data, out)
    assert nightly["shards"]["classified"] == 1 and nightly["shards"]["skipped_done"] == 3
    assert nightly["images"] == 360
    assert_exactly_once(out, data)

    # A shard that changed since it was done is redone, and the summary says so.
    write_archive(tmp_path / "other", "val", 40, 40)
    changed = tmp_path / "in" / "test" / "shard-000001.tar"
    shutil.copy(tmp_path / "other" / "val" / "shard-000000.tar", changed)
    redo = run(data, out)
    assert redo["shards"]["redone_changed"] == 1 and redo["shards"]["redone_changed_uris"] == [str(changed)]
    assert redo["images"] == 300 and redo["shards"]["classified"] == 1
    assert_exactly_once(out, data)

    # --overwrite starts over.
    fresh = run(data, out, overwrite=True)
    assert fresh["shards"]["classified"] == 4 and fresh["images"] == 300
    assert_exactly_once(out, data)


def test_a_large_shard_is_read_in_pieces_and_every_image_comes_once(ray_local, tmp_path):
    """Three shards of 30 images and one of 600 (3 corrupt): the large one is cut in MAX_PIECES
    read items (some empty: 600 images are 5 chunks of 128); its rows, error rows included, come
    once, and it is done only when all its pieces are."""
    from gfpipe.classify.state import MAX_PIECES

    data = tmp_path / "in"
    write_archive(tmp_path / "src", "a", 90, 30)
    manifest = write_archive(tmp_path / "src", "z", 600, 600, corrupt=3)
    data.mkdir()
    for split in ("a", "z"):
        for tar in sorted((tmp_path / "src" / split).glob("*.tar")):
            tar.rename(data / f"{split}-{tar.name}")
    out = str(tmp_path / "out")
    summary = run(str(data), out, batch_size=32, batches_per_call=2)
    rows = assert_exactly_once(out, str(data))
    assert len(rows) == 690 and summary["images"] == 690 and summary["errors"] == 3
    assert {r["key"].rsplit("#", 1)[1] for r in rows if r["error"]} == set(manifest["corrupt_keys"])
    assert summary["shards"]["split_for_reading"] == {str(data / "z-shard-000000.tar"): MAX_PIECES}
    assert summary["shards"]["classified"] == 4
    markers = sorted((tmp_path / "out" / "_gfpipe" / "done").glob("*.json"))
    assert sorted(json.loads(m.read_text())["records"] for m in markers) == [30, 30, 30, 600]
    again = run(str(data), out, batch_size=32, batches_per_call=2)  # all done: nothing to read again
    assert again["shards"]["skipped_done"] == 4 and again["images"] == 690


def test_a_killed_actor_loses_nothing_and_its_spend_counts_once(ray_local, tmp_path, monkeypatch):
    write_archive(tmp_path / "in", "test", 256, 64)
    data, out = str(tmp_path / "in" / "test"), str(tmp_path / "out")
    # The actor dies in its second call after writing its parts, before its final ledger report:
    # the partial reports it made are in the ledger, and the retry must replace them.
    monkeypatch.setenv(FAULT_ENV, f"kill-actor:call=2:at=written:marker={tmp_path / 'killed'}")
    summary = run(data, out, batch_size=16, batches_per_call=4)
    assert (tmp_path / "killed").exists(), "the fault did not fire"
    rows = assert_exactly_once(out, data)
    assert summary["retried_calls"] >= 1
    assert summary["budget"]["total_macs"] == pytest.approx(sum(r["macs"] for r in rows))
    assert summary["images"] == 256


def test_a_rerun_after_the_driver_died_finishes_without_duplicates(ray_local, tmp_path):
    write_archive(tmp_path / "in", "test", 240, 60)
    data, out = str(tmp_path / "in" / "test"), str(tmp_path / "out")
    command = [sys.executable, "-m", "gfpipe.cli", "classify", "--input", data, "--output", out, "--budget", "9M"]
    env = {**os.environ, "RAY_ADDRESS": ray_local, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(
        command, env={**env, FAULT_ENV: "kill-driver:after=1"}, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    done = list((tmp_path / "out" / "_gfpipe" / "done").glob("*.json"))
    assert 1 <= len(done) < 4
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "_gfpipe" / "summary.json").read_text())
    assert summary["shards"]["skipped_done"] == len(done) and summary["images"] == 240
    assert_exactly_once(out, data)
    assert "report: " in second.stdout


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_the_budget_is_a_ceiling_on_an_archive_unlike_the_calibration_data(ray_local, tmp_path, shift):
    """The demo model's thresholds come from its validation split; these archives have more small
    (hard) targets, or fewer. Fixed thresholds miss the budget by far more than 2% on them; the
    job lands within 2% and never more than 1% above."""
    import dataclasses

    import numpy as np

    from gfpipe.budget.solver import simulate, solve_thresholds
    from gfpipe.checkpoint import load_checkpoint
    from gfpipe.classify.calibrate import archive_scores, sample_images
    from gfpipe.data.shards import ReadOptions
    from gfpipe.data.synthetic import write_dataset
    from gfpipe.evaluate import calibration_scores

    from .conftest import DEMO_GLYPHS

    write_dataset(str(tmp_path), "test", 3000, dataclasses.replace(DEMO_GLYPHS, shift=shift), shard_size=500)
    data = str(tmp_path / "test")
    summary = run(data, str(tmp_path / "out"), budget="9M")
    ratio = summary["budget"]["ratio"]

    model = load_checkpoint("demo")
    costs = np.asarray(summary["step_macs"])
    fixed = solve_thresholds(costs, calibration_scores(model), 9e6).thresholds
    images = sample_images(discover_shards(data), 3000, model.card.preprocessing, None, ReadOptions())
    uncontrolled = simulate(archive_scores(model, images, 256, "cpu"), fixed, costs).mean_cost / 9e6
    assert abs(uncontrolled - 1) > 0.1, uncontrolled
    assert 0.98 <= ratio <= 1.01, (ratio, uncontrolled)


def test_s3_to_s3_with_corrupt_files(ray_local, s3_server, tmp_path):
    options = s3_server.storage_options
    bucket = s3_server.make_bucket("classify")
    data, out = f"s3://{bucket}/archive/test", f"s3://{bucket}/tags"
    manifest = write_archive(f"s3://{bucket}/archive", "test", 150, 50, corrupt=3, storage_options=options)
    summary = run(data, out, storage_options=options)
    rows = assert_exactly_once(out, data, options)
    assert {r["key"].rsplit("#", 1)[1] for r in rows if r["error"]} == set(manifest["corrupt_keys"])
    assert summary["images"] == 150 and summary["errors"] == 3
    from gfpipe.data.io import read_bytes

    assert json.loads(read_bytes(f"{out}/_gfpipe/summary.json", options))["run_id"] == summary["run_id"]
    assert b"data:image/png;base64," in read_bytes(f"{out}/report.html", options)
    again = run(data, out, storage_options=options)
    assert again["shards"]["skipped_done"] == 3 and again["shards"]["classified"] == 0


def test_calibrate_on_the_archive_and_a_time_budget(ray_local, tmp_path):
    """--calibrate N: thresholds from N images of the input, whose all-steps cost is charged;
    --budget-time: per-step seconds measured on a replica, the target derived from the wall time."""
    write_archive(tmp_path / "in", "test", 200, 100)
    data = str(tmp_path / "in" / "test")
    calibrated = run(data, str(tmp_path / "cal"), budget="9M", calibrate=64)
    costs = calibrated["step_macs"]
    assert calibrated["thresholds"]["calibration"] == "64 images sampled from the input"
    assert calibrated["budget"]["calibration_macs"] == pytest.approx(64 * costs[-1])
    rows = assert_exactly_once(str(tmp_path / "cal"), data)
    assert calibrated["budget"]["total_macs"] == pytest.approx(sum(r["macs"] for r in rows) + 64 * costs[-1])

    timed = run(data, str(tmp_path / "timed"), budget="1h")  # far more than needed: every image runs all steps
    assert timed["budget"]["unit"] == "s" and timed["budget"]["clamped"]
    assert timed["exits"] == [0, 0, 200]
