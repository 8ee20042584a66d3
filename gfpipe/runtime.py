"""Process settings for inference jobs: keep glibc malloc from handing activation memory back.

By default glibc returns freed memory to the kernel: chunks above a sliding mmap threshold
(128 KiB up to 32 MiB) are unmapped on free, and free space above 128 KiB-64 MiB at the top of
a heap is trimmed. A batch of activations is freed and allocated again at every model call, so
the next call page-faults all of it back in, and in a VM with free-page reporting the host may
have taken those pages back by then. That made the early-exit engine's CPU time swing by a
third between identical runs (BENCHMARKS.md, "Early-exit engine"). Raising both thresholds
keeps that memory in the process, where the next call reuses it.

Call `tune_allocator()` once, early, in every process that runs a model (the CLI, each Ray
actor, the benchmarks for both sides). It touches only this process and only future
allocations; it imports nothing heavy and is a no-op (logged at debug level) off glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MiB = 1 << 20
DEFAULT_TRIM_THRESHOLD = 1024 * MiB  # free heap top kept before trimming
DEFAULT_MMAP_THRESHOLD = 256 * MiB  # allocations below this come from the heap, not mmap

# Environment variables that already set the same thing: an explicit setting wins.
_ENV = {
    M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    M_ARENA_MAX: ("MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
}
_NAMES = {M_TRIM_THRESHOLD: "trim_threshold", M_MMAP_THRESHOLD: "mmap_threshold", M_ARENA_MAX: "arena_max"}

_applied: dict[str, int] = {}


def _glibc_mallopt():
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        version = ""
    if not version.startswith("glibc"):
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def _set_in_environment(param: int) -> str | None:
    variable, tunable = _ENV[param]
    if variable in os.environ:
        return variable
    if tunable in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def tune_allocator(
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    arena_max: int | None = None,
) -> dict[str, int]:
    """Raise glibc's trim and mmap thresholds (and optionally cap arenas) in this process.

    Returns the settings now in force from this function, by name ({} off glibc). Settings
    given by environment variables (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_,
    MALLOC_ARENA_MAX, GLIBC_TUNABLES) are left alone. Calling it again with the same values does
    nothing; with other values it applies those.
    """
    wanted = {M_TRIM_THRESHOLD: trim_threshold, M_MMAP_THRESHOLD: mmap_threshold}
    if arena_max is not None:
        wanted[M_ARENA_MAX] = arena_max
    for param, value in wanted.items():
        if not 0 < value < 2**31:
            raise ValueError(f"{_NAMES[param]} must be between 1 and 2**31 - 1, got {value}")
    mallopt = _glibc_mallopt()
    if mallopt is None:
        log.debug("not glibc: allocator settings left as they are")
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    for param, value in wanted.items():
        name = _NAMES[param]
        if _applied.get(name) == value:
            continue
        source = _set_in_environment(param)
        if source is not None:
            log.debug("malloc %s is set by %s; left as it is", name, source)
            continue
        if mallopt(param, value) != 1:
            log.warning("mallopt(%s, %d) failed; malloc %s left as it is", name, value, name)
            continue
        _applied[name] = value
        log.debug("malloc %s = %d", name, value)
    return dict(_applied)
