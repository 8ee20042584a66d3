"""Test hook (not for users): training failures on purpose, to test resume.

The environment variable `GFPIPE_TRAIN_FAULT` in the driver makes a worker fail on purpose, e.g.
`kill-worker:rank=1:stage=stage1:epoch=1:marker=/tmp/m` (that rank exits mid-epoch, once: the
marker file records it) or `kill-driver:stage=stage1:epoch=0` (rank 0 kills the driver process
after that epoch's checkpoint is committed). The driver parses it (`fault_spec`) into the loop
config; the worker loop acts on it (`fault_at`, `claim`, `committed`, `kill_driver`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

FAULT_ENV = "GFPIPE_TRAIN_FAULT"


def fault_spec() -> dict[str, Any]:
    """The test hook from GFPIPE_TRAIN_FAULT: 'kind:key=value:...' (see the module doc)."""
    text = os.environ.get(FAULT_ENV, "").strip()
    if not text:
        return {}
    kind, *pairs = text.split(":")
    spec: dict[str, Any] = {"kind": kind}
    for pair in pairs:
        key, _, value = pair.partition("=")
        spec[key] = value
    return spec


def fault_at(fault: Mapping[str, Any], kind: str, stage: str, epoch: int) -> bool:
    return fault.get("kind") == kind and fault.get("stage") == stage and int(fault.get("epoch", -1)) == epoch


def claim(marker: str | None) -> bool:
    """True once per marker file (created atomically here)."""
    if not marker:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def committed() -> None:
    """Wait until Ray Train has committed every checkpoint reported so far (test hooks only)."""
    import ray.train

    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def kill_driver(rank: int, pid: int) -> None:
    """Test hook: rank 0 waits until the last checkpoint is committed, then kills the driver."""
    if rank != 0:
        time.sleep(60)  # the driver's death takes this worker down
        return
    committed()
    log.warning("test fault: killing the driver (pid %d)", pid)
    os.kill(pid, signal.SIGKILL)
    time.sleep(60)
