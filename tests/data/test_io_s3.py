"""Storage on a real S3 endpoint (moto_server): reads, writes, listings, errors, synth + read back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gfpipe import cli
from gfpipe.data import read_images
from gfpipe.data.io import (
    NoShardsError,
    StorageConnectionError,
    StorageNotFoundError,
    StoragePermissionError,
    list_shards,
    open_file,
    read_bytes,
    write_bytes,
)
from gfpipe.data.shards import iter_shard_records
from gfpipe.data.synthetic import SynthConfig, generate_sample

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
    with pytest.raises(
        StoragePermissionError, match=r"s3://some-bucket/a.tar: access denied .*check the credentials"
    ):
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
