"""gfpipe.runtime.tune_allocator: applies glibc settings once, leaves explicit ones alone."""

import subprocess
import sys

import pytest

from gfpipe import runtime


def _in_fresh_interpreter(code: str, env: dict[str, str] | None = None) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_tune_allocator_runs_and_is_idempotent():
    first = runtime.tune_allocator()
    assert runtime.tune_allocator() == first
    if runtime._glibc_mallopt() is None:
        assert first == {}
    else:
        defaults = {
            runtime.M_TRIM_THRESHOLD: runtime.DEFAULT_TRIM_THRESHOLD,
            runtime.M_MMAP_THRESHOLD: runtime.DEFAULT_MMAP_THRESHOLD,
        }
        expected = {runtime._NAMES[p]: v for p, v in defaults.items() if runtime._set_in_environment(p) is None}
        assert first == expected


def test_tune_allocator_rejects_values_mallopt_cannot_take():
    with pytest.raises(ValueError, match="trim_threshold"):
        runtime.tune_allocator(trim_threshold=2**31)
    with pytest.raises(ValueError, match="mmap_threshold"):
        runtime.tune_allocator(mmap_threshold=0)


def test_environment_settings_win_and_module_is_light():
    if runtime._glibc_mallopt() is None:
        pytest.skip("not glibc")
    code = (
        f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('rt', {runtime.__file__!r}); "
        "rt = importlib.util.module_from_spec(spec); spec.loader.exec_module(rt); "
        "print(sorted(rt.tune_allocator()), 'torch' in sys.modules)"
    )
    out = _in_fresh_interpreter(code, {"MALLOC_TRIM_THRESHOLD_": "4194304"})
    assert out == "['mmap_threshold'] False"
