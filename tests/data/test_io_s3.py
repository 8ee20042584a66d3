"""Storage on a real S3 endpoint (moto_server): reads, writes, listings, errors, synth + read back."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from gfpipe import cli
from gfpipe.data import read_images
from gfpipe.data.io import (
    NoShardsError,
    StorageConnectionError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    ensure_writable,
    filesystem,
    list_shards,
    open_file,
    read_bytes,
    write_bytes,
)
from gfpipe.data.shards import count_images, iter_shard_records
from gfpipe.data.synthetic import SynthConfig, generate_sample, write_dataset

pytestmark = pytest.mark.slow


def test_write_read_roundtrip(s3_server):
    bucket = s3_server.make_bucket()
    uri = f"s3://{bucket}/dir/a.bin"
    with open_file(uri, "wb", s3_server.storage_options) as fh:
        fh.write(b"payload")
    assert read_bytes(uri, s3_server.storage_options) == b"payload"


def test_list_shards_prefix_glob_brace_keep_scheme(s3_server):
    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options
    for i in range(4):
        write_bytes(f"s3://{bucket}/data/shard-{i:04d}.tar", b"x", opts)
    write_bytes(f"s3://{bucket}/data/_manifest.json", b"{}", opts)
    expected = [f"s3://{bucket}/data/shard-{i:04d}.tar" for i in range(4)]
    assert list_shards(f"s3://{bucket}/data", opts) == expected
    assert list_shards(f"s3://{bucket}/data/", opts) == expected
    assert list_shards(f"s3://{bucket}/data/*.tar", opts) == expected
    assert list_shards(f"s3://{bucket}/data/shard-{{0001..0002}}.tar", opts) == expected[1:3]
    assert list_shards(f"s3://{bucket}/data/shard-000", opts) == expected  # key prefix
    with pytest.raises(StorageNotFoundError, match="shard-0005.tar"):
        list_shards(f"s3://{bucket}/data/shard-{{0003..0005}}.tar", opts)


def test_missing_bucket_names_bucket_and_uri(s3_server):
    opts = s3_server.storage_options
    with pytest.raises(
        StorageNotFoundError, match=r"s3://no-such-bucket-x/a.tar: bucket 'no-such-bucket-x' does not exist"
    ):
        open_file("s3://no-such-bucket-x/a.tar", "rb", opts)
    with pytest.raises(NoShardsError, match="bucket 'no-such-bucket-x' does not exist"):
        list_shards("s3://no-such-bucket-x/data/*.tar", opts)
    with pytest.raises(StorageNotFoundError, match="does not exist"):
        write_bytes("s3://no-such-bucket-x/w.bin", b"x", opts)


def test_missing_key_and_empty_prefix(s3_server):
    bucket = s3_server.make_bucket()
    with pytest.raises(StorageNotFoundError, match=f"s3://{bucket}/nope.tar: not found"):
        open_file(f"s3://{bucket}/nope.tar", "rb", s3_server.storage_options)
    with pytest.raises(NoShardsError, match="no files matched"):
        list_shards(f"s3://{bucket}/empty/", s3_server.storage_options)


def test_bad_credentials_are_clear(s3_server_factory):
    strict = s3_server_factory({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    opts = {"key": "AKIAWRONG", "secret": "wrong", "endpoint_url": strict.endpoint_url}
    with pytest.raises(StoragePermissionError, match=r"s3://some-bucket/a.tar: access denied .*check the credentials"):
        open_file("s3://some-bucket/a.tar", "rb", opts)
    with pytest.raises(StoragePermissionError, match="InvalidAccessKeyId"):
        list_shards("s3://some-bucket/data/", opts)


def test_unreachable_endpoint_is_clear():
    opts = {
        "key": "k",
        "secret": "s",
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(
        StorageConnectionError, match=r"s3://b/x.tar: cannot reach the storage endpoint at http://127.0.0.1:9"
    ):
        open_file("s3://b/x.tar", "rb", opts)


def test_standard_aws_environment_is_enough(s3_server, monkeypatch):
    bucket = s3_server.make_bucket()
    write_bytes(f"s3://{bucket}/x/a.tar", b"x", s3_server.storage_options)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    assert list_shards(f"s3://{bucket}/x/") == [f"s3://{bucket}/x/a.tar"]


def test_synth_to_s3_and_read_back_both_formats(s3_server):
    bucket = s3_server.make_bucket()
    out = f"s3://{bucket}/glyphs"
    code = cli.main(
        [
            "synth",
            "--out",
            out,
            "--split",
            "test",
            "--count",
            "6",
            "--seed",
            "3",
            "--format",
            "wds,parquet",
            "--shard-size",
            "4",
            "--image-size",
            "64",
            "--endpoint-url",
            s3_server.endpoint_url,
            "--storage-options",
            '{"key": "testing", "secret": "testing"}',
        ]
    )
    assert code == 0
    opts = s3_server.storage_options
    assert read_bytes(f"{out}/classes.txt", opts).decode().split() == list("0123456789")
    config = SynthConfig(image_size=64, seed=3)
    for fmt in ("wds", "parquet"):
        rows = list(read_images(f"{out}/test", opts, format=fmt))
        assert len(rows) == 6 and all(r["error"] is None for r in rows)
        assert rows[0]["shard"] == (
            f"{out}/test/shard-000000.tar" if fmt == "wds" else f"{out}/test/shard-000000.parquet"
        )
        for row in rows:
            truth = generate_sample(row["metadata"]["index"], "test", config)
            assert row["label"] == truth.label and row["metadata"]["bbox"] == list(truth.bbox)


def test_unordered_tar_and_image_folder_on_s3(s3_server):
    import tarfile

    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options

    def png(value):
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("a.png", png(1)), ("b.png", png(2)), ("a.cls", b"4"), ("b.cls", b"6")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_bytes(f"s3://{bucket}/wds/s.tar", buf.getvalue(), opts)
    rows = list(read_images(f"s3://{bucket}/wds/s.tar", opts))
    assert [(r["key"], r["label"]) for r in rows] == [
        (f"s3://{bucket}/wds/s.tar#a", 4),
        (f"s3://{bucket}/wds/s.tar#b", 6),
    ]

    for cls in ("cat", "dog"):
        write_bytes(f"s3://{bucket}/folders/{cls}/0.png", png(9), opts)
    rows = list(read_images(f"s3://{bucket}/folders", opts, class_folders=True))
    assert [(r["key"], r["label"]) for r in rows] == [
        (f"s3://{bucket}/folders/cat/0.png", 0),
        (f"s3://{bucket}/folders/dog/0.png", 1),
    ]
    (record,) = list(iter_shard_records(f"s3://{bucket}/wds/missing.tar", opts))
    assert record.error.startswith("shard: ") and "missing.tar" in record.error


# --- first contact: fail fast when unreachable, say what is tried when slow ----------------


def test_unreachable_endpoint_fails_fast_with_default_options(closed_port, caplog):
    import logging
    import time

    endpoint = f"http://127.0.0.1:{closed_port}"
    opts = {"key": "k", "secret": "s", "endpoint_url": endpoint}  # no retry or timeout settings
    caplog.set_level(logging.INFO, logger="gfpipe.data.io")
    for call in (
        lambda: open_file("s3://bucket/x.tar", "rb", opts),
        lambda: list_shards("s3://bucket/data/*.tar", opts),
        lambda: ensure_writable("s3://bucket/out", opts),
    ):
        started = time.monotonic()
        with pytest.raises(StorageConnectionError, match=f"cannot reach the storage endpoint at {endpoint}"):
            call()
        assert time.monotonic() - started < 5.0  # a bound on the failure path (was 8-22 s)
    assert "connecting to S3 endpoint" not in caplog.text  # fast failures stay quiet


def test_unreachable_endpoint_is_reported_before_missing_credentials(closed_port, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(StorageConnectionError, match=f"at {endpoint}"):
        ensure_writable("s3://bucket/out", {"endpoint_url": endpoint})


def test_cli_unreachable_endpoint_is_one_line_and_fast(closed_port, tmp_path, capsys):
    import time

    started = time.monotonic()
    code = cli.main(
        [
            "synth",
            "--out",
            "s3://bucket/ds",
            "--count",
            "1",
            "--image-size",
            "32",
            "--endpoint-url",
            f"http://127.0.0.1:{closed_port}",
            "--storage-options",
            '{"key": "k", "secret": "s"}',
        ]
    )
    assert code == 2 and time.monotonic() - started < 5.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{closed_port}" in err and "s3://bucket/ds" in err


def test_slow_first_answer_logs_the_endpoint_being_tried(fake_endpoint, caplog, monkeypatch):
    import logging

    from gfpipe.data import io as storage

    monkeypatch.setattr(storage, "SLOW_CONNECT_LOG_SECONDS", 0.2)  # 1 s in real use
    slow = fake_endpoint(status=404, delay=0.8)
    caplog.set_level(logging.INFO, logger="gfpipe.data.io")
    filesystem("s3://slow-bucket/x.tar", {"key": "k", "secret": "s", "endpoint_url": slow.url})
    assert f"connecting to S3 endpoint {slow.url} for s3://slow-bucket/x.tar" in caplog.text
    caplog.clear()
    fast = fake_endpoint(status=404)
    filesystem("s3://fast-bucket/x.tar", {"key": "k", "secret": "s", "endpoint_url": fast.url})
    assert "connecting to" not in caplog.text and fast.requests == ["HEAD /fast-bucket"]


def test_first_contact_is_one_request_once_and_user_retry_settings_win(fake_endpoint):
    failing = fake_endpoint(status=500)
    opts = {"key": "k", "secret": "s", "endpoint_url": failing.url}
    fs, _ = filesystem("s3://b/x", opts)
    filesystem("s3://b/y", opts)
    assert failing.requests == ["HEAD /b"]  # one attempt, and only for the first use
    assert "retries" not in fs.config_kwargs and "connect_timeout" not in fs.config_kwargs  # normal ops keep theirs

    patient = fake_endpoint(status=500)
    mine = {
        "key": "k",
        "secret": "s",
        "endpoint_url": patient.url,
        "config_kwargs": {"retries": {"total_max_attempts": 2, "mode": "standard"}},
    }
    filesystem("s3://b/x", mine)
    assert patient.requests == ["HEAD /b", "HEAD /b"]


def test_retries_option_sets_s3fs_retries_per_option_set(fake_endpoint):
    endpoint = fake_endpoint(status=404)
    base = {"key": "k", "secret": "s", "endpoint_url": endpoint.url}
    plain, _ = filesystem("s3://b/x", base)
    two, path = filesystem("s3://b/x", {**base, "retries": 2})
    again, _ = filesystem("s3://b/y", {**base, "retries": 2})
    three, _ = filesystem("s3://b/x", {**base, "retries": 3})
    assert (plain.retries, two.retries, three.retries) == (5, 2, 3) and path == "b/x"
    assert again is two and three is not two and plain is not two
    with pytest.raises(ValueError, match="retries must be an integer >= 1"):
        filesystem("s3://b/x", {**base, "retries": 0})


# --- ensure_writable, write_dataset and counts on S3 ---------------------------------------


def test_ensure_writable_on_s3(s3_server, closed_port):
    import s3fs

    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options
    ensure_writable(f"s3://{bucket}/out/run1", opts)
    raw = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    assert raw.find(bucket) == []  # the probe object is gone
    with pytest.raises(StorageNotFoundError, match="bucket 'no-such-bucket-w' does not exist"):
        ensure_writable("s3://no-such-bucket-w/out", opts)
    write_bytes(f"s3://{bucket}/file.bin", b"x", opts)
    with pytest.raises(StorageError, match=f"s3://{bucket}/file.bin: is an existing file"):
        ensure_writable(f"s3://{bucket}/file.bin", opts)
    with pytest.raises(StorageConnectionError):
        ensure_writable(f"s3://{bucket}/out", {**opts, "endpoint_url": f"http://127.0.0.1:{closed_port}"})


def test_synth_split_on_s3_is_refused_then_replaced_and_neighbours_survive(s3_server):
    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options
    out = f"s3://{bucket}/ds"
    write_dataset(out, "test", 10, SynthConfig(image_size=48, seed=1), shard_size=4, storage_options=opts)
    write_bytes(f"{out}/test/notes.txt", b"foreign", opts)
    write_bytes(f"{out}/test-old/keep.bin", b"neighbour", opts)  # shares the key prefix 'test'
    write_bytes(f"{out}/testx.bin", b"neighbour", opts)
    with pytest.raises(FileExistsError, match=f"{out}/test already holds 5 files"):
        write_dataset(out, "test", 3, SynthConfig(image_size=48, seed=2), shard_size=4, storage_options=opts)
    manifest = write_dataset(
        out, "test", 3, SynthConfig(image_size=48, seed=2), shard_size=4, storage_options=opts, overwrite=True
    )
    assert manifest["shards"] == ["shard-000000.tar"]
    assert list_shards(f"{out}/test", opts) == [f"{out}/test/shard-000000.tar"]
    rows = list(read_images(f"{out}/test", opts))
    assert len(rows) == 3 and {r["metadata"]["seed"] for r in rows} == {2}
    assert read_bytes(f"{out}/test-old/keep.bin", opts) == b"neighbour"
    assert read_bytes(f"{out}/testx.bin", opts) == b"neighbour"
    stored = json.loads(read_bytes(f"{out}/test/_manifest.json", opts))
    assert stored["shards"] == ["shard-000000.tar"] and stored["count"] == 3


def test_count_images_on_s3_parquet_footer_and_tar_manifest(s3_server):
    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options
    out = f"s3://{bucket}/ds"
    write_dataset(
        out, "val", 7, SynthConfig(image_size=32), shard_size=4, formats=("wds", "parquet"), storage_options=opts
    )
    for name, expected in (("shard-000000", 4), ("shard-000001", 3)):
        for ext in ("tar", "parquet"):
            uri = f"{out}/val/{name}.{ext}"
            assert count_images(uri, opts) == expected == len(list(iter_shard_records(uri, opts)))
    # a tar that is not the one the manifest describes, or has no manifest, is not counted remotely
    write_bytes(f"{out}/val/shard-000001.tar", read_bytes(f"{out}/val/shard-000000.tar", opts), opts)
    assert count_images(f"{out}/val/shard-000001.tar", opts) is None
    write_bytes(f"s3://{bucket}/loose/a.tar", read_bytes(f"{out}/val/shard-000000.tar", opts), opts)
    assert count_images(f"s3://{bucket}/loose/a.tar", opts) is None
