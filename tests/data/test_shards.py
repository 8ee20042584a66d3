"""Shard readers (WebDataset, Parquet, folders), raw records, read_images."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gfpipe.data import read_images
from gfpipe.data.io import StorageError
from gfpipe.data.shards import (
    RawRecord,
    ReadOptions,
    Shard,
    count_images,
    decode_record,
    discover_shards,
    iter_shard_records,
    shard_format,
)


def image_bytes(value: int, fmt: str = "PNG", size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_parquet(path: Path, columns: dict, row_group_size: int = 64) -> None:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


# --- WebDataset -----------------------------------------------------------------------


def test_wds_groups_members_that_are_not_adjacent(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(
        shard,
        [
            ("a.png", image_bytes(10)),
            ("b.png", image_bytes(20)),
            ("a.cls", b"3"),
            ("c.jpg", image_bytes(30, "JPEG")),
            ("b.json", json.dumps({"label": 5, "bbox": [1, 2, 3, 4]}).encode()),
            ("c.cls", b"7"),
        ],
    )
    records = list(iter_shard_records(str(shard)))
    assert [r.key for r in records] == [f"{shard}#a", f"{shard}#b", f"{shard}#c"]
    assert [r.label for r in records] == [3, 5, 7]
    assert records[1].metadata == {"label": 5, "bbox": [1, 2, 3, 4]}
    assert all(r.error is None and r.shard == str(shard) for r in records)
    rows = [decode_record(r) for r in records]
    assert [int(r["image"][0, 0, 0]) for r in rows[:2]] == [10, 20]
    assert (rows[0]["width"], rows[0]["height"]) == (12, 8)


def test_wds_keys_with_dirs_and_dots_and_every_image_extension(tmp_path):
    shard = tmp_path / "s.tar"
    members = []
    for i, ext in enumerate(["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(ext, ext.upper())
        members.append((f"dir/x{i}.{ext}", image_bytes(40, fmt)))
    members.append(("dir/y.seg.png", image_bytes(1)))  # not the sample's image: extension is seg.png
    members.append(("dir/y.jpg", image_bytes(2, "JPEG")))
    write_tar(shard, members)
    rows = [decode_record(r) for r in iter_shard_records(str(shard))]
    assert len(rows) == 9 and all(r["error"] is None for r in rows), [r["error"] for r in rows]
    assert rows[-1]["key"].endswith("#dir/y") and rows[-1]["image"][0, 0, 0] < 10


def test_wds_sample_without_image_is_an_error_row(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(shard, [("a.cls", b"1"), ("a.txt", b"hi"), ("b.png", image_bytes(5))])
    records = list(iter_shard_records(str(shard)))
    assert records[0].error == "no image member (has: cls, txt)" and records[0].label == 1
    assert records[1].error is None


def test_wds_text_labels_use_class_names(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(shard, [("a.png", image_bytes(5)), ("a.cls", b"cat\n"), ("b.png", image_bytes(5)), ("b.cls", b"owl")])
    records = list(iter_shard_records(str(shard), options=ReadOptions(class_names=("dog", "cat"))))
    assert [r.label for r in records] == [1, None]


def test_not_a_tar_is_one_shard_error_record(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(b"this is not a tar archive at all" * 100)
    (record,) = list(iter_shard_records(str(shard)))
    assert record.key == str(shard) and record.data is None
    assert record.error.startswith("shard: not a tar file")


def test_truncated_tar_keeps_complete_samples_and_reports(tmp_path):
    shard = tmp_path / "s.tar"
    rng = np.random.default_rng(0)
    noisy = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    payloads = []
    for arr in noisy:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    write_tar(shard, [(f"k{i}.png", data) for i, data in enumerate(payloads)])
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.6)])
    records = list(iter_shard_records(str(shard)))
    good = [r for r in records if r.error is None]
    assert 1 <= len(good) < 4
    assert records[-1].error.startswith("shard: truncated")


def test_missing_shard_file_is_an_error_record_not_an_exception(tmp_path):
    (record,) = list(iter_shard_records(str(tmp_path / "gone.tar")))
    assert record.error.startswith("shard: ") and "gone.tar" in record.error


def test_gzipped_tar(tmp_path):
    plain = tmp_path / "p.tar"
    write_tar(plain, [("b.png", image_bytes(7)), ("a.png", image_bytes(8)), ("b.cls", b"2")])
    shard = tmp_path / "s.tar.gz"
    shard.write_bytes(gzip.compress(plain.read_bytes()))
    records = list(iter_shard_records(str(shard)))
    assert [(r.key.split("#")[1], r.label) for r in records] == [("b", 2), ("a", None)]


# --- Parquet --------------------------------------------------------------------------


def test_parquet_row_keys_labels_metadata_stream_in_batches(tmp_path):
    shard = tmp_path / "p.parquet"
    n = 150
    write_parquet(
        shard,
        {
            "image": [image_bytes(i) for i in range(n)],
            "label": list(range(n)),
            "json": [json.dumps({"i": i}) for i in range(n)],
            "other": ["x"] * n,
        },
        row_group_size=50,
    )
    records = iter_shard_records(str(shard), options=ReadOptions(parquet_batch_rows=16))
    first = next(records)
    assert first.key == f"{shard}#0" and first.label == 0 and first.metadata == {"i": 0}
    rest = list(records)
    assert len(rest) == n - 1 and rest[-1].key == f"{shard}#{n - 1}" and rest[-1].label == n - 1


def test_parquet_custom_columns_key_and_text_labels(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(
        shard,
        {"img": [image_bytes(1), None, image_bytes(3)], "id": ["a", "b", "c"], "y": ["cat", "dog", "cat"]},
    )
    opts = ReadOptions(image_column="img", key_column="id", label_column="y", class_names=("dog", "cat"))
    records = list(iter_shard_records(str(shard), options=opts))
    assert [r.key for r in records] == ["a", "b", "c"]
    assert [r.label for r in records] == [1, 0, 1]
    assert records[1].error == "no image bytes (null)"
    assert records[2].error is None and decode_record(records[2])["image"][0, 0, 0] == 3


def test_parquet_struct_image_column_like_hugging_face(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(shard, {"image": [{"bytes": image_bytes(9), "path": "a.png"}]})
    (record,) = list(iter_shard_records(str(shard)))
    assert decode_record(record)["image"][0, 0, 0] == 9


def test_parquet_missing_image_column_and_not_parquet_are_shard_errors(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(shard, {"pixels": [b"x"], "label": [1]})
    (record,) = list(iter_shard_records(str(shard)))
    assert record.error.startswith("shard: no image column 'image' (columns: pixels, label)")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 nope")
    (record,) = list(iter_shard_records(str(bad)))
    assert record.error.startswith("shard: not a Parquet file")
    (record,) = list(iter_shard_records(str(shard), options=ReadOptions(image_column="pixels", key_column="k")))
    assert "no key column 'k'" in record.error


# --- folders --------------------------------------------------------------------------


def _image_tree(root: Path) -> None:
    for cls, value in (("cat", 10), ("dog", 20)):
        for i in range(2):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(value))
    (root / "dog" / ".DS_Store").write_bytes(b"junk")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.jpg").write_bytes(b"<html>oops</html>")


def test_folder_class_subfolders_become_labels(tmp_path):
    _image_tree(tmp_path)
    shards = discover_shards(str(tmp_path), options=ReadOptions(class_folders=True))
    assert shards == [Shard(f"{tmp_path}/cat", "folder", 0), Shard(f"{tmp_path}/dog", "folder", 1)]
    rows = list(read_images(str(tmp_path), class_folders=True))
    assert [r["key"] for r in rows] == [
        f"{tmp_path}/cat/0.png",
        f"{tmp_path}/cat/1.png",
        f"{tmp_path}/dog/0.png",
        f"{tmp_path}/dog/1.png",
        f"{tmp_path}/dog/broken.jpg",
    ]
    assert [r["label"] for r in rows] == [0, 0, 1, 1, 1]
    assert rows[-1]["image"] is None and rows[-1]["error"] == "not an image: HTML page"


def test_folder_labels_follow_given_class_names_and_default_is_unlabelled(tmp_path):
    _image_tree(tmp_path)
    shards = discover_shards(str(tmp_path), options=ReadOptions(class_folders=True, class_names=("dog", "cat")))
    assert [s.label for s in shards] == [1, 0]
    assert [s.label for s in discover_shards(str(tmp_path))] == [None, None]


# --- discovery, read_images, record rows --------------------------------------------------


def test_auto_format_and_mixed_formats_error(tmp_path):
    write_tar(tmp_path / "a.tar", [("x.png", image_bytes(1))])
    write_parquet(tmp_path / "b.parquet", {"image": [image_bytes(2)]})
    with pytest.raises(StorageError, match="several formats .*1 wds, 1 parquet"):
        discover_shards(str(tmp_path))
    assert discover_shards(str(tmp_path), options=ReadOptions(format="parquet")) == [
        Shard(f"{tmp_path}/b.parquet", "parquet")
    ]
    assert [r["key"] for r in read_images(f"{tmp_path}/*.tar")] == [f"{tmp_path}/a.tar#x"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StorageError, match="no .tar, .parquet or image files"):
        discover_shards(str(tmp_path / "notes.txt"))


def test_keys_are_stable_across_runs_and_unique(tmp_path):
    for s in range(2):
        write_tar(tmp_path / f"s{s}.tar", [(f"k{i}.png", image_bytes(i)) for i in range(3)])
    first = [r["key"] for r in read_images(f"file://{tmp_path}")]
    second = [r["key"] for r in read_images(f"file://{tmp_path}")]
    assert first == second and len(set(first)) == 6
    assert first[0] == f"file://{tmp_path}/s0.tar#k0"


def test_read_images_bad_shard_does_not_stop_the_others(tmp_path):
    write_tar(tmp_path / "a.tar", [("x.png", image_bytes(1))])
    (tmp_path / "b.tar").write_bytes(b"garbage")
    write_tar(tmp_path / "c.tar", [("y.png", image_bytes(2))])
    rows = list(read_images(str(tmp_path), max_pixels=10_000))
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert rows[1]["key"] == f"{tmp_path}/b.tar" and rows[1]["error"].startswith("shard: not a tar file")


def test_raw_record_row_roundtrip():
    record = RawRecord("k", "s", b"x", 3, {"bbox": [1, 2]}, None)
    row = record.to_row()
    assert isinstance(row["metadata"], str)
    assert RawRecord.from_row(row) == record
    assert Shard(**dataclasses.asdict(Shard("u", "wds"))) == Shard("u", "wds")


def test_shard_format_from_name():
    assert [shard_format(u) for u in ("a.tar", "b.TGZ", "c.tar.gz", "d.parquet", "s3://b/x/")] == [
        "wds",
        "wds",
        "wds",
        "parquet",
        "folder",
    ]


def test_read_options_reject_unknown_format():
    with pytest.raises(ValueError, match="format 'zip'"):
        ReadOptions(format="zip")


def test_decode_record_draft_and_limits(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(buf, format="JPEG")
    record = RawRecord("k", "s", buf.getvalue())
    row = decode_record(record, draft_size=100)
    assert (row["width"], row["height"]) == (1200, 900) and row["image"].shape == (
        113,
        150,
        3,
    )  # 1/8 scale, shorter side >= 100
    assert decode_record(record, max_pixels=1000)["error"].startswith("too large")


# --- count_images: cheap counts that match what the reader yields --------------------------


def _records(uri, options=None):
    return len(list(iter_shard_records(uri, options=options)))


def test_count_tar_by_headers_matches_the_reader_with_members_out_of_order(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(
        shard,
        [
            ("a.png", image_bytes(1)),
            ("b.png", image_bytes(2)),
            ("a.cls", b"3"),
            ("c.json", b"{}"),  # a sample without an image: the reader yields an error record for it
            ("b.json", b"{}"),
            ("a.json", b"{}"),
            ("dir/d.jpg", image_bytes(4, "JPEG")),
            ("c.cls", b"1"),
            ("noext", b"x"),  # not key.extension: skipped by the reader
        ],
    )
    assert count_images(str(shard)) == _records(str(shard)) == 4
    assert count_images(Shard(f"file://{shard}", "wds")) == 4


def test_count_truncated_and_broken_tars_like_the_reader(tmp_path):
    shard = tmp_path / "s.tar"
    rng = np.random.default_rng(1)
    members = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
        members += [(f"k{i}.png", buf.getvalue()), (f"k{i}.cls", b"1")]
    write_tar(shard, members)
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.6)])
    expected = _records(str(shard))
    assert 2 <= expected <= 4 and count_images(str(shard)) == expected  # complete samples + 1 error
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 200)
    assert count_images(str(tmp_path / "junk.tar")) == _records(str(tmp_path / "junk.tar")) == 1
    plain = tmp_path / "p.tar"
    write_tar(plain, [("a.png", image_bytes(1))])
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert count_images(str(tmp_path / "z.tar.gz")) is None  # would mean decompressing it


def test_count_parquet_from_the_footer_including_rows_without_images(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(
        shard, {"image": [image_bytes(1), None, image_bytes(3)] * 50, "label": [1, 2, 3] * 50}, row_group_size=16
    )
    assert count_images(str(shard)) == _records(str(shard)) == 150
    options = ReadOptions(image_column="pixels")
    assert count_images(str(shard), options=options) == _records(str(shard), options) == 1
    options = ReadOptions(key_column="id")
    assert count_images(str(shard), options=options) == _records(str(shard), options) == 1
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nope")
    assert count_images(str(tmp_path / "bad.parquet")) == _records(str(tmp_path / "bad.parquet")) == 1


def test_count_folder_shards_by_listing(tmp_path):
    _image_tree(tmp_path)
    for shard in discover_shards(str(tmp_path), options=ReadOptions(class_folders=True)):
        assert count_images(shard) == _records(shard)
    assert count_images(Shard(f"{tmp_path}/dog", "folder")) == 3  # 2 images + broken.jpg
    assert count_images(Shard(f"{tmp_path}/cat/0.png", "folder")) == 1


def test_count_missing_shard_raises_instead_of_guessing(tmp_path):
    with pytest.raises(StorageError, match="gone.tar"):
        count_images(str(tmp_path / "gone.tar"))


# --- labels that do not fit: unknown text labels, unknown class folders --------------------


def test_unknown_text_labels_are_kept_for_the_caller(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(
        shard,
        [
            ("a.png", image_bytes(5)),
            ("a.cls", b"cat\n"),
            ("b.png", image_bytes(5)),
            ("b.cls", b"owl"),
            ("c.png", image_bytes(5)),
            ("c.json", json.dumps({"label": "emu"}).encode()),
            ("d.png", image_bytes(5)),
            ("d.json", json.dumps({"label": "emu"}).encode()),
            ("d.cls", b"dog"),
            ("e.png", image_bytes(5)),
            ("e.cls", b"-1"),
        ],
    )
    records = list(iter_shard_records(str(shard), options=ReadOptions(class_names=("dog", "cat"))))
    assert [(r.label, r.unknown_label) for r in records] == [
        (1, None),
        (None, "owl"),
        (None, "emu"),
        (0, None),
        (None, None),
    ]
    (plain,) = [r for r in iter_shard_records(str(shard)) if r.key.endswith("#a")]
    assert (plain.label, plain.unknown_label) == (None, "cat")  # no class names: still visible
    row = decode_record(records[1])
    assert row["unknown_label"] == "owl" and row["label"] is None and row["error"] is None
    assert RawRecord.from_row(records[1].to_row()) == records[1]


def test_unknown_text_labels_in_parquet_columns_and_metadata(tmp_path):
    shard = tmp_path / "p.parquet"
    write_parquet(
        shard,
        {
            "image": [image_bytes(1)] * 4,
            "y": ["cat", "owl", None, "dog"],
            "json": [None, None, json.dumps({"label": "emu"}), json.dumps({"label": "cat"})],
        },
    )
    opts = ReadOptions(label_column="y", class_names=("dog", "cat"))
    records = list(iter_shard_records(str(shard), options=opts))
    assert [(r.label, r.unknown_label) for r in records] == [(1, None), (None, "owl"), (None, "emu"), (0, None)]


def test_strict_classes_refuses_unknown_class_folders(tmp_path):
    _image_tree(tmp_path)
    (tmp_path / "eel").mkdir()
    (tmp_path / "eel" / "0.png").write_bytes(image_bytes(3))
    lenient = discover_shards(str(tmp_path), options=ReadOptions(class_folders=True, class_names=("dog", "cat")))
    assert [s.label for s in lenient] == [1, 0, None]  # only a warning without strict_classes
    strict = ReadOptions(class_folders=True, class_names=("dog", "cat"), strict_classes=True)
    with pytest.raises(ValueError, match=r"1 class folders are not among the 2 class names: eel; known: dog, cat"):
        discover_shards(str(tmp_path), options=strict)
    with pytest.raises(ValueError, match="eel"):
        list(read_images(str(tmp_path), options=strict))
    ok = ReadOptions(class_folders=True, class_names=("dog", "cat", "eel"), strict_classes=True)
    assert [s.label for s in discover_shards(str(tmp_path), options=ok)] == [1, 0, 2]


# --- Pieces of a shard (wanted) ------------------------------------------------------------


def _three_formats(tmp_path: Path) -> dict[str, str]:
    """The same 10 images as a tar, a Parquet file and a folder."""
    write_tar(tmp_path / "s.tar", [(f"k{i:02d}.png", image_bytes(i)) for i in range(10)])
    write_parquet(tmp_path / "s.parquet", {"image": [image_bytes(i) for i in range(10)]}, row_group_size=4)
    (tmp_path / "folder").mkdir()
    for i in range(10):
        (tmp_path / "folder" / f"k{i:02d}.png").write_bytes(image_bytes(i))
    return {"wds": str(tmp_path / "s.tar"), "parquet": str(tmp_path / "s.parquet"), "folder": str(tmp_path / "folder")}


@pytest.mark.parametrize("fmt", ["wds", "parquet", "folder"])
def test_a_piece_keeps_every_ordinal_and_reads_only_its_records(tmp_path, fmt):
    uri = _three_formats(tmp_path)[fmt]
    whole = list(iter_shard_records(Shard(uri, fmt)))
    odd = list(iter_shard_records(Shard(uri, fmt), wanted=lambda i: i % 2 == 1))
    assert len(odd) == len(whole) == 10
    assert [r is None for r in odd] == [i % 2 == 0 for i in range(10)]
    assert [r.key for r in odd if r is not None] == [r.key for i, r in enumerate(whole) if i % 2 == 1]
    assert all(r.data == w.data for r, w in zip(odd, whole, strict=True) if r is not None)


def test_a_piece_does_not_read_the_bytes_of_other_records(tmp_path, monkeypatch):
    import gfpipe.data.shards as shards

    uri = _three_formats(tmp_path)["wds"]
    reads = []
    real = shards._member_bytes
    monkeypatch.setattr(shards, "_member_bytes", lambda fh, member: reads.append(member.name) or real(fh, member))
    list(iter_shard_records(Shard(uri, "wds"), wanted=lambda i: i >= 8))
    assert reads == ["k08.png", "k09.png"]
    (tmp_path / "folder" / "k03.png").chmod(0)  # unreadable for others than root; and it is not opened at all
    calls = []
    monkeypatch.setattr(shards, "to_uri", lambda fs, name, base: calls.append(name) or name)
    records = list(iter_shard_records(Shard(str(tmp_path / "folder"), "folder"), wanted=lambda i: i == 5))
    assert [r.key for r in records if r is not None] == [calls[0]] and len(calls) == 1


def test_a_shard_error_belongs_to_the_piece_of_its_ordinal(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    bad = Shard(str(tmp_path / "bad.tar"), "wds")
    assert [r.error[:6] for r in iter_shard_records(bad, wanted=lambda i: i == 0)] == ["shard:"]
    assert list(iter_shard_records(bad, wanted=lambda i: i != 0)) == [None]
    # a tar cut short: complete samples first, then the error at the next ordinal
    payloads = [np.random.default_rng(i).bytes(4000) for i in range(4)]  # reading needs no decoding
    write_tar(tmp_path / "t.tar", [(f"k{i}.png", data) for i, data in enumerate(payloads)])
    data = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: int(len(data) * 0.6)])
    whole = list(iter_shard_records(Shard(str(tmp_path / "t.tar"), "wds")))
    last = len(whole) - 1
    assert whole[last].error.startswith("shard:")
    tail = list(iter_shard_records(Shard(str(tmp_path / "t.tar"), "wds"), wanted=lambda i: i == last))
    assert [r is None for r in tail] == [True] * last + [False] and tail[last].error == whole[last].error
