"""Storage options checks, write probes and strict JSON (local; S3 cases are in test_io_s3.py)."""

from __future__ import annotations

import datetime
import enum
import json
import math
import os
import pathlib

import fsspec
import numpy as np
import pytest
from fsspec.spec import AbstractFileSystem

from gfpipe.data.io import (
    StorageError,
    StoragePermissionError,
    check_storage_options,
    dumps_json,
    ensure_writable,
    filesystem,
    list_shards,
    to_json_value,
    write_json,
)

# --- check_storage_options ---------------------------------------------------------------


def test_misspelled_s3_key_names_flag_key_suggestion_and_accepted_keys():
    with pytest.raises(ValueError) as info:
        check_storage_options("s3://bucket/x", {"endpoit_url": "http://h:9000"}, flag="--storage-options")
    text = str(info.value)
    assert text.startswith("--storage-options: 'endpoit_url' is not an option of s3:// storage (s3://bucket/x)")
    assert "did you mean 'endpoint_url'?" in text
    assert "accepted keys: anon, " in text and "profile" in text and "use_listings_cache" in text


@pytest.mark.parametrize(
    "options",
    [
        {"anon": True},
        {"key": "k", "secret": "s", "endpoint_url": "http://h:9000"},
        {"profile": "dev"},  # s3fs hands it to the aiobotocore session
        {"use_listings_cache": False, "skip_instance_cache": True, "listings_expiry_time": 5},
        {"retries": 2, "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 2}}},
        {"client_kwargs": {"region_name": "eu-west-1", "verify": False}},
    ],
)
def test_known_s3_keys_pass(options):
    check_storage_options("s3://bucket/x", options)
    check_storage_options("s3a://bucket/x", options)


def test_nested_botocore_keys_are_checked_too():
    with pytest.raises(ValueError, match=r"--so config_kwargs: 'conect_timeout' .*did you mean 'connect_timeout'"):
        check_storage_options("s3://b/x", {"config_kwargs": {"conect_timeout": 1}}, flag="--so")
    with pytest.raises(ValueError, match=r"client_kwargs: 'regin_name' .*did you mean 'region_name'"):
        check_storage_options("s3://b/x", {"client_kwargs": {"regin_name": "x"}})
    with pytest.raises(ValueError, match="config_kwargs must be a mapping, got int"):
        check_storage_options("s3://b/x", {"config_kwargs": 3})


def test_options_must_be_a_mapping():
    with pytest.raises(ValueError, match="storage_options must be a mapping .* got list"):
        check_storage_options("s3://b/x", ["anon"])


class _StrictFS(AbstractFileSystem):
    protocol = "gfpipestrict"

    def __init__(self, colour: str = "red"):
        super().__init__()
        self.colour = colour


def test_other_protocols_use_their_signature_unless_they_take_kwargs():
    fsspec.register_implementation("gfpipestrict", _StrictFS, clobber=True)
    check_storage_options("gfpipestrict://x", {"colour": "blue"})
    with pytest.raises(ValueError, match=r"'color' is not an option of gfpipestrict:// .*did you mean 'colour'"):
        check_storage_options("gfpipestrict://x", {"color": "blue"})
    check_storage_options("/tmp/x", {"anything": 1})  # LocalFileSystem takes **kwargs
    check_storage_options("memory://x", {"anything": 1})


def test_filesystem_gives_the_library_the_same_error():
    # before: s3fs kept the key and aiobotocore raised a bare TypeError on the first request
    with pytest.raises(ValueError, match=r"^storage_options: 'endpoit_url' .*did you mean 'endpoint_url'"):
        filesystem("s3://bucket/x", {"endpoit_url": "http://127.0.0.1:1"})
    with pytest.raises(ValueError, match="'endpoit_url'"):
        list_shards("s3://bucket/x/*.tar", {"endpoit_url": "http://127.0.0.1:1"})


def test_caller_options_are_not_mutated(closed_port):
    options = {
        "key": "k",
        "secret": "s",
        "endpoint_url": f"http://127.0.0.1:{closed_port}",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(StorageError):
        filesystem("s3://b/x", options)
    assert options["config_kwargs"] == {"retries": {"max_attempts": 1}}  # botocore rewrites its copy


# --- ensure_writable ---------------------------------------------------------------------


def test_ensure_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    ensure_writable(str(target))
    assert target.is_dir() and list(target.iterdir()) == []
    ensure_writable(f"file://{target}")


def test_ensure_writable_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match=r"/f: is an existing file, not a folder"):
        ensure_writable(str(tmp_path / "f"))
    with pytest.raises(StorageError, match=r"/f/sub: part of this path is an existing file"):
        ensure_writable(str(tmp_path / "f" / "sub"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_ensure_writable_permission_denied_is_clear(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoragePermissionError, match=r"locked/out: permission denied .*choose a location"):
            ensure_writable(str(locked / "out"))
        with pytest.raises(StoragePermissionError, match="permission denied"):
            ensure_writable(str(locked))
    finally:
        locked.chmod(0o700)


# --- strict JSON -------------------------------------------------------------------------


class _Colour(enum.Enum):
    RED = "red"


def _strict_load(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_to_json_value_converts_numpy_and_non_finite_floats():
    value = {
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        "flag": np.bool_(True),
        "arr": np.arange(3, dtype=np.int16),
        "grid": np.zeros((2, 2)),
        "zero_d": np.array(1.5),
        "floats": [math.inf, -math.inf, math.nan, np.float64("nan"), np.float32("inf")],
        "tuple": (1, 2),
        np.int64(3): "numpy key",
        4: "int key",
        "path": pathlib.PurePosixPath("/a/b"),
        "when": datetime.date(2024, 1, 2),
        "enum": _Colour.RED,
        "set": {3, 1},
    }
    out = to_json_value(value)
    assert out == {
        "f32": 0.5,
        "i64": 7,
        "flag": True,
        "arr": [0, 1, 2],
        "grid": [[0.0, 0.0], [0.0, 0.0]],
        "zero_d": 1.5,
        "floats": ["inf", "-inf", None, None, "inf"],
        "tuple": [1, 2],
        "3": "numpy key",
        "4": "int key",
        "path": "/a/b",
        "when": "2024-01-02",
        "enum": "red",
        "set": [1, 3],
    }
    assert type(out["i64"]) is int and type(out["flag"]) is bool and type(out["f32"]) is float
    assert _strict_load(dumps_json(value)) == out


def test_to_json_value_names_where_an_unserialisable_value_is():
    with pytest.raises(TypeError, match=r"value\['run'\]\['model'\] of type object cannot be written as JSON"):
        to_json_value({"run": {"model": object()}})
    with pytest.raises(TypeError, match=r"value\['blob'\] is 3 bytes"):
        to_json_value({"blob": b"abc"})


def test_write_json_is_strict_and_goes_through_storage(tmp_path):
    target = tmp_path / "deep" / "summary.json"
    write_json(str(target), {"mean": np.float64(math.nan), "max": np.float32(np.inf), "n": np.int32(2)})
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert _strict_load(text) == {"mean": None, "max": "inf", "n": 2}


def test_ensure_writable_translates_a_refused_write(tmp_path, monkeypatch):
    # the same path as the chmod test, for machines where tests run as root
    from fsspec.implementations.local import LocalFileSystem

    def refuse(self, path, value, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(LocalFileSystem, "pipe_file", refuse)
    with pytest.raises(StoragePermissionError, match=r"/out: permission denied .*choose a location you may write"):
        ensure_writable(str(tmp_path / "out"))
