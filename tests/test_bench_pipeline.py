"""bench/pipeline.py's own parts on a tiny archive: its decoding side feeds `read_shards` the way
the job does (it broke silently once, when the read tasks' input gained shard pieces)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from gfpipe.budget.costs import step_costs
from gfpipe.budget.solver import solve_thresholds
from gfpipe.checkpoint import load_checkpoint
from gfpipe.data.synthetic import write_dataset
from gfpipe.evaluate import calibration_scores

from .classify.conftest import DEMO_GLYPHS

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pipeline.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pipeline_bench_decodes_every_image_and_runs_the_engine_on_them(tmp_path):
    bench = load_bench()
    write_dataset(str(tmp_path), "test", 50, DEMO_GLYPHS, shard_size=20)
    model = load_checkpoint("demo")
    keys, images, rate = bench.decoded(str(tmp_path / "test"), model.card.preprocessing)
    size = model.card.preprocessing.crop
    assert len(keys) == len(set(keys)) == 50 and images.shape == (50, 3, size, size) and images.dtype == np.uint8
    assert rate > 0
    thresholds = solve_thresholds(np.asarray(step_costs(model)), calibration_scores(model), 9e6).thresholds
    assert bench.engine_rate(model, keys, images, 16, 32, "cpu", thresholds=thresholds) > 0
