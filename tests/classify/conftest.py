"""Fixtures for the classify-job tests: a local Ray per module and small glyph archives."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfpipe.data.synthetic import SynthConfig

DEMO_GLYPHS = SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=1)
"""The demo model's geometry (configs/demo.yaml), with a seed it was not trained on."""


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """A real local Ray on 2 CPUs for this module; yields its address (for subprocess drivers)."""
    import ray

    ray.init(address="local", num_cpus=2, logging_level=logging.WARNING)  # never a `ray start` cluster
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_archive(root: Path | str, split: str, count: int, shard_size: int, corrupt: int = 0, **options) -> dict:
    """A glyph archive at the demo geometry under root/split; returns its manifest."""
    from gfpipe.data.synthetic import write_dataset

    return write_dataset(str(root), split, count, DEMO_GLYPHS, shard_size=shard_size, corrupt=corrupt, **options)
