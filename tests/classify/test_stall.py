"""A job that stops making progress fails with a message instead of waiting forever (its own
module: the hung actor is left behind in this module's Ray, which ends with the module)."""

from __future__ import annotations

import logging
import re
import time

import pytest

from gfpipe.classify.replica import FAULT_ENV

from .conftest import write_archive
from .test_pipeline import run

pytestmark = pytest.mark.slow


def test_a_stuck_job_fails_and_says_why(ray_local, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gfpipe.pipeline")
    write_archive(tmp_path / "in", "test", 64, 32)
    monkeypatch.setenv(FAULT_ENV, "hang-actor:call=1")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"no image finished for .*the job is stuck.*Re-run the same command"):
        run(str(tmp_path / "in" / "test"), str(tmp_path / "out"), stall_seconds=6.0, progress_seconds=1.0)
    assert time.monotonic() - started < 120
    assert not list((tmp_path / "out" / "_gfpipe").glob("done/*.json"))
    # The progress line ran meanwhile: done / total, rate, cost vs budget.
    assert re.search(r"classified 0/64 images, 0\.0 images/s, cost 0 MACs per image vs budget 9 MMACs", caplog.text)
