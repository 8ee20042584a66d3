"""Local storage: URIs, listing patterns, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfpipe.data.io import (
    NoShardsError,
    StorageError,
    StorageNotFoundError,
    expand_braces,
    filesystem,
    join_uri,
    list_shards,
    open_file,
    read_bytes,
    write_bytes,
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


def test_expand_braces_keeps_zero_padding_and_products():
    assert expand_braces("s-{0000..0002}.tar") == ["s-0000.tar", "s-0001.tar", "s-0002.tar"]
    assert expand_braces("{a,b}/x-{1..2}") == ["a/x-1", "a/x-2", "b/x-1", "b/x-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("r-{3..1}") == ["r-3", "r-2", "r-1"]


@pytest.mark.parametrize("bad", ["x-{1..}.tar", "x-{abc}.tar", "x-{{1..2}}.tar"])
def test_expand_braces_rejects_malformed_groups(bad):
    with pytest.raises(ValueError, match="brace"):
        expand_braces(bad)


def test_open_file_roundtrip_plain_and_file_uri(tmp_path):
    target = tmp_path / "deep" / "dir" / "a.bin"
    with open_file(str(target), "wb") as fh:  # creates parent folders
        fh.write(b"hello")
    assert read_bytes(f"file://{target}") == b"hello"
    fh = open_file(str(target))  # also usable without `with`
    assert fh.read() == b"hello"
    fh.close()
    write_bytes(join_uri(f"file://{tmp_path}", "b.bin"), b"x")
    assert (tmp_path / "b.bin").read_bytes() == b"x"


def test_open_missing_file_names_uri(tmp_path):
    missing = str(tmp_path / "nope.tar")
    with pytest.raises(StorageNotFoundError, match="nope.tar"):
        open_file(missing)


def test_caller_errors_inside_with_pass_through(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"1")
    with pytest.raises(OSError, match="mine") as info, open_file(str(path)) as fh:
        fh.read()
        raise OSError("mine")
    assert not isinstance(info.value, StorageError)


def test_filesystem_splits_protocol(tmp_path):
    fs, path = filesystem(f"file://{tmp_path}/x.tar")
    assert path == f"{tmp_path}/x.tar"
    assert "file" in fs.protocol
    with pytest.raises(StorageError, match="no filesystem for protocol"):
        filesystem("nosuchproto://bucket/x")


def test_list_shards_prefix_is_recursive_sorted_and_skips_hidden(tmp_path):
    _touch(
        tmp_path,
        "b/2.tar",
        "a/1.tar",
        "a/0.tar",
        "_manifest.json",
        ".hidden.tar",
        "a/_SUCCESS",
        ".ipynb_checkpoints/3.tar",
        "_tmp/4.tar",
    )
    assert list_shards(str(tmp_path)) == [f"{tmp_path}/a/0.tar", f"{tmp_path}/a/1.tar", f"{tmp_path}/b/2.tar"]
    assert list_shards(f"{tmp_path}/*/*.tar") == [
        f"{tmp_path}/a/0.tar",
        f"{tmp_path}/a/1.tar",
        f"{tmp_path}/b/2.tar",
    ]
    assert list_shards(f"{tmp_path}/_tmp/4.tar") == [f"{tmp_path}/_tmp/4.tar"]  # named explicitly
    assert list_shards(f"{tmp_path}/_tmp") == [f"{tmp_path}/_tmp/4.tar"]


def test_list_shards_keeps_file_scheme(tmp_path):
    _touch(tmp_path, "s-0.tar")
    assert list_shards(f"file://{tmp_path}") == [f"file://{tmp_path}/s-0.tar"]


def test_list_shards_glob_and_key_prefix(tmp_path):
    _touch(tmp_path, "train-0.tar", "train-1.tar", "val-0.tar", "train-0.parquet")
    assert list_shards(f"{tmp_path}/train-*.tar") == [f"{tmp_path}/train-0.tar", f"{tmp_path}/train-1.tar"]
    assert list_shards(f"{tmp_path}/train-") == [
        f"{tmp_path}/train-0.parquet",
        f"{tmp_path}/train-0.tar",
        f"{tmp_path}/train-1.tar",
    ]


def test_list_shards_brace_pattern(tmp_path):
    _touch(tmp_path, *(f"shard-{i:04d}.tar" for i in range(5)))
    got = list_shards(f"{tmp_path}/shard-{{0001..0003}}.tar")
    assert got == [f"{tmp_path}/shard-{i:04d}.tar" for i in (1, 2, 3)]


def test_list_shards_brace_with_missing_members_says_which(tmp_path):
    _touch(tmp_path, "shard-0000.tar", "shard-0001.tar")
    with pytest.raises(StorageNotFoundError, match=r"2 of 4 shards do not exist .*shard-0002.tar"):
        list_shards(f"{tmp_path}/shard-{{0000..0003}}.tar")


def test_list_shards_nothing_matched_is_clear(tmp_path):
    with pytest.raises(NoShardsError, match="no files matched"):
        list_shards(f"{tmp_path}/nothing-*.tar")
    with pytest.raises(NoShardsError, match="no files matched"):
        list_shards(f"{tmp_path}/missing-{{0..3}}.tar")
