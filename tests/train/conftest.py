"""Fixtures for the training tests: a local Ray (started once per module) and glyph data."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

FAST_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
"""Ray Train's controller polls its workers every 2 s by default; each run waits for a few polls
(start, the end, a failure). Polling faster saves seconds per run and changes nothing else."""


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """A real local Ray on 2 CPUs for this module; yields its address (for subprocess drivers)."""
    import ray

    saved = {k: os.environ.get(k) for k in FAST_POLL}
    os.environ.update(FAST_POLL)
    ray.init(address="local", num_cpus=2, logging_level=logging.WARNING)  # never a `ray start` cluster
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    """64 px cluttered glyphs: train 48 images in 3 shards, val 15 in 2 (an odd count, so a
    split that drops rows to even out the workers shows), classes.txt with 10 digits."""
    from gfpipe.data.synthetic import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("glyphs")
    write_dataset(str(root), "train", 48, SynthConfig(image_size=64, seed=0), shard_size=16)
    write_dataset(str(root), "val", 15, SynthConfig(image_size=64, seed=0), shard_size=8)
    return root
