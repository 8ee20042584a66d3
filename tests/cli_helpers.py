"""Running `gfpipe` as a user's shell would, and checking that bad invocations fail in one line."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def gfpipe_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gfpipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", **(env or {})},
    )


def one_line_error_problems(
    cases: Sequence[tuple[list[str], str]], cwd: Path, prefix: Sequence[str] = (), env: dict | None = None
) -> list[str]:
    """Run `gfpipe *prefix *args` for every (args, named) case in parallel threads (each is its own
    process); describe each one that did not exit 2 with exactly one stderr line naming `named`
    and no traceback."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: gfpipe_cli(*prefix, *case[0], cwd=cwd, env=env), cases))
    problems = []
    for (args, named), result in zip(cases, results, strict=True):
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2 or len(lines) != 1 or "Traceback" in result.stderr or named not in result.stderr:
            command = " ".join(["gfpipe", *prefix, *args])
            problems.append(f"{command}\n  -> status {result.returncode}, stderr:\n{result.stderr}")
    return problems
