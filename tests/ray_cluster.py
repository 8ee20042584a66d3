"""A real multi-node Ray cluster on this machine, for the tests of the user's commands.

`LoopbackCluster` runs `ray start --head --block` and, on request, more nodes (`ray start
--address ... --block`), each in its own process group with a Ray temp dir of its own (so
`ray.init()` elsewhere in the test session never finds it), and submits jobs the way a user does:
`ray job submit --address http://127.0.0.1:DASHBOARD --working-dir . -- python jobs/...`.

Ray 2.60 turns token authentication on for `ray start` clusters; a loopback test cluster opts out
(RAY_AUTH_MODE=disabled on both sides; README, "Troubleshooting"). The job's `python` is the
virtualenv's, as for a user who activated it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A head node (`cpus` CPUs) and the nodes added with `add_node`; `stop()` ends them all."""

    def __init__(self, logs: Path, cpus: float = 2, env: dict[str, str] | None = None) -> None:
        self.logs = logs
        self.env = {**ENV, **(env or {})}  # the nodes' processes (and so the jobs' drivers) see these
        self.port, dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.nodes: list[tuple[subprocess.Popen, Path, Path]] = []
        self._start(
            "head",
            ["--head", f"--port={self.port}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
             f"--num-cpus={cpus:g}", "--disable-usage-stats"],
        )  # fmt: skip
        self._wait_for_jobs()

    def add_node(self, cpus: float) -> None:
        """Another node joining the head; returns once the cluster reports it alive."""
        self._start(f"node{len(self.nodes)}", [f"--address=127.0.0.1:{self.port}", f"--num-cpus={cpus:g}"])
        self.wait_for_nodes(len(self.nodes))

    def submit(self, *args: str, runtime_env: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --address DASHBOARD --working-dir . -- ARGS` (or `--runtime-env FILE`
        instead of `--working-dir .`) from the repository root; waits for the job and returns the
        finished `ray job submit` process."""
        ships = ["--runtime-env", runtime_env] if runtime_env else ["--working-dir", "."]
        return subprocess.run(
            [RAY, "job", "submit", "--address", self.dashboard, *ships, "--", *args],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def alive_nodes(self) -> list[dict]:
        """The cluster's ALIVE nodes from the state API (node_id, is_head_node, resources_total...)."""
        url = f"{self.dashboard}/api/v0/nodes?limit=100&detail=false&timeout=10"
        with urllib.request.urlopen(url, timeout=15) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_running()
            with contextlib.suppress(OSError, KeyError, ValueError):
                alive = self.alive_nodes()
                if len(alive) >= count:
                    return alive
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {count} alive nodes in {timeout:g} s: {self._log_tails()}")

    def stop(self) -> None:
        """SIGTERM to every node's process group (workers first), SIGKILL after 30 s."""
        for proc, _, _ in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for _, _, temp in self.nodes:
            shutil.rmtree(temp, ignore_errors=True)

    def _start(self, name: str, args: list[str]) -> None:
        """One node with a temp dir of its own, as nodes of a real cluster have their own disks:
        a node that cleans up a job's working-dir copy must not delete the one the driver on
        another node runs in (they would share a path under one temp dir)."""
        log = self.logs / f"{name}.log"
        temp = Path(tempfile.mkdtemp(prefix="rayt-"))  # short: Ray's socket paths live under it
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", *args],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )  # fmt: skip
        self.nodes.append((proc, log, temp))

    def _wait_for_jobs(self, timeout: float = 90) -> None:
        """Until the head takes jobs: a trivial job, not `ray job list`, which answers before the
        job agent can take jobs ("No available agent to submit job")."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_running()
            probe = subprocess.run(
                [RAY, "job", "submit", "--address", self.dashboard, "--", "true"],
                env=ENV, capture_output=True, timeout=120,
            )  # fmt: skip
            if probe.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"the ray head did not take jobs in {timeout:g} s: {self._log_tails()}")

    def _check_running(self) -> None:
        for proc, log, _ in self.nodes:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: {log.read_text()[-3000:]}")

    def _log_tails(self) -> str:
        return "\n".join(f"{log.name}: {log.read_text()[-1500:]}" for _, log, _ in self.nodes)
