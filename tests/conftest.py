"""Shared test fixtures. Fixtures that belong to one area live in that area's conftest.py.

`s3_server` is a real S3 HTTP endpoint: a `moto_server` process on 127.0.0.1, started once per
session and killed by PID at the end. Data, pipeline and training tests all read and write
through it with `s3_server.storage_options`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# Tests run tiny models: one thread is faster for them, and it keeps them from slowing to a crawl
# when Ray workers or a second test process compete for the two cores (OpenMP spin-waits).
torch.set_num_threads(1)

_CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclasses.dataclass
class S3Server:
    """A running moto S3 endpoint: URL, fsspec storage options, bucket helper."""

    endpoint_url: str
    pid: int
    _counter: Any = dataclasses.field(default_factory=itertools.count)

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for gfpipe.data.io / s3fs: explicit test credentials plus the endpoint."""
        return {**_CREDENTIALS, "endpoint_url": self.endpoint_url}

    def env(self) -> dict[str, str]:
        """The same endpoint and credentials as standard AWS environment variables (for subprocesses, Ray workers)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": _CREDENTIALS["key"],
            "AWS_SECRET_ACCESS_KEY": _CREDENTIALS["secret"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, uniquely named bucket and return its name."""
        import s3fs

        name = f"{prefix}-{os.getpid()}-{next(self._counter)}".lower()
        fs = s3fs.S3FileSystem(**self.storage_options)
        fs.mkdir(name)
        fs.invalidate_cache()
        return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(env: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """Start `moto_server` on a free loopback port; returns the process and its URL."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}; is moto[server] installed?")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop_moto(proc)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout:.0f} s")


def stop_moto(proc: subprocess.Popen) -> None:
    """Terminate the server by its PID, then kill it if it does not exit."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint for the whole session (moto_server on 127.0.0.1)."""
    proc, url = start_moto()
    try:
        yield S3Server(endpoint_url=url, pid=proc.pid)
    finally:
        stop_moto(proc)


@pytest.fixture(scope="session")
def s3_server_factory() -> Iterator[Any]:
    """Start extra moto servers with their own environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0`
    to make it check credentials); all are killed by PID at the end of the session."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str] | None = None) -> S3Server:
        proc, url = start_moto(env)
        started.append(proc)
        return S3Server(endpoint_url=url, pid=proc.pid)

    try:
        yield start
    finally:
        for proc in started:
            stop_moto(proc)
