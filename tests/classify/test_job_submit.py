"""The user's exact command: a cluster from `ray start --head` (loopback), then
`ray job submit --working-dir . -- python jobs/classify.py ...`; the job must succeed and its rows
be complete. Its own module: it runs its own cluster, not the other tests' `ray.init`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfpipe.classify.parts import read_rows

from .conftest import write_archive
from .test_pipeline import input_keys

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns token authentication on for `ray start` clusters; a client then needs the token
# and RAY_AUTH_MODE=token. A loopback test cluster opts out (README, "Troubleshooting").
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
# As a user with the virtualenv activated: the job's `python` is the one that has gfpipe.
VENV_PATH = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[str]:
    """`ray start --head --block` in its own process group; yields the dashboard (job) address."""
    port, dashboard = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    env = {**os.environ, **NO_AUTH, **VENV_PATH}
    with open(log, "w") as out:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
             "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            # A trivial job, not `ray job list`: the list answers before the job agent can take jobs
            # ("No available agent to submit job").
            probe = subprocess.run(
                [RAY, "job", "submit", "--address", address, "--", "true"], env=env, capture_output=True, timeout=120
            )
            if probe.returncode == 0:
                break
            assert head.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail(f"ray head did not come up: {log.read_text()[-3000:]}")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)


def test_ray_job_submit_runs_the_classify_job(ray_head, tmp_path):
    write_archive(tmp_path / "in", "test", 120, 40, corrupt=2)
    data, out = str(tmp_path / "in" / "test"), str(tmp_path / "out")
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--working-dir", ".", "--",
         "python", "jobs/classify.py", "--input", data, "--output", out, "--budget", "9M"],
        cwd=ROOT, env={**os.environ, **NO_AUTH, **VENV_PATH}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout + submit.stderr
    assert "classified 120 images (2 error rows)" in submit.stdout
    keys = read_rows(out).column("key").to_pylist()
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(input_keys(data))
    summary = json.loads((tmp_path / "out" / "_gfpipe" / "summary.json").read_text())
    assert summary["images"] == 120 and summary["errors"] == 2 and summary["ray_version"].startswith("2.60")
