"""Readers for image archives: WebDataset tar shards, Parquet files, image folders.

Reading is split from decoding. `iter_shard_records` turns one shard into raw, undecoded
`RawRecord`s (key, shard, bytes, label, metadata, error) and never raises for bad data: the Ray
pipeline calls it inside one task per shard and decodes in a separate stage, and plain Python
(`read_images`, tests, evaluation) chains the same two steps. Keys are the shard URI plus the
member name or row index, so they are the same on every run and resume can trust them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from gfpipe.data.decode import DEFAULT_MAX_PIXELS
from gfpipe.data.decode import decode as decode_image
from gfpipe.data.io import (
    StorageError,
    dumps_json,
    filesystem,
    list_shards,
    open_file,
    storage_error,
    to_uri,
)
from gfpipe.data.tar_headers import TarMember, has_data_from, list_plain_tar

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
"""Image file extensions, in the order a WebDataset sample's image member is chosen."""

WDS_SUFFIXES = (".tar", ".tgz", ".tar.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
FORMATS = ("auto", "wds", "parquet", "folder")
LABEL_EXTENSIONS = ("cls", "label")

_SPOOL_BYTES = 64 * 2**20
_COPY_CHUNK = 8 * 2**20
_WDS_NAME = re.compile(r"^((?:.*/)?[^./][^/]*?)\.([^/]+)$")
TarEntry = TarMember | tarfile.TarInfo  # name, offset_data, size


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How to find images in shards; the defaults fit WebDataset and gfpipe's own Parquet.

    format: auto (from file extensions), wds, parquet or folder.
    image_column / label_column / key_column / metadata_column: Parquet column names; a missing
    label or metadata column is fine, a missing image column or a named key column is a shard
    error. Without a key column, keys are `shard#row`.
    class_folders: folders only; the first sub-folder under the root names the class.
    class_names: maps text labels (folder names, non-numeric `cls` members, string label
    columns) to indices, so labels match a checkpoint's class order; without it folders are
    numbered in sorted order. A text label that is not among them leaves the record's `label`
    None and puts the text in `unknown_label`, for the caller to refuse.
    strict_classes: class folders only; a folder whose name is not among class_names is a
    ValueError in `discover_shards` (listing the unknown folders and the known names) instead
    of a warning and unlabelled images.
    parquet_batch_rows: rows decoded per Parquet batch (memory bound for big images).
    """

    format: str = "auto"
    image_column: str = "image"
    label_column: str | None = "label"
    key_column: str | None = None
    metadata_column: str | None = "json"
    class_folders: bool = False
    class_names: tuple[str, ...] | None = None
    parquet_batch_rows: int = 64
    strict_classes: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.parquet_batch_rows < 1:
            raise ValueError("parquet_batch_rows must be >= 1")
        if self.class_names is not None and not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of reading work: a tar file, a Parquet file, or a folder of images.

    `label` is the class of a folder shard found under a class sub-folder (else None). Plain
    fields only, so `dataclasses.asdict(shard)` is a Ray Data row and `Shard(**row)` rebuilds it.
    """

    uri: str
    format: str
    label: int | None = None


@dataclasses.dataclass(frozen=True)
class RawRecord:
    """One image before decoding, or an error that stands for it (then `data` is None).

    `unknown_label` holds a text label that could not be mapped to an index (not a number and
    not among `ReadOptions.class_names`); `label` is None then. Readers never raise for it:
    callers that need labels (evaluation, training) refuse such records with the key and text.
    """

    key: str
    shard: str
    data: bytes | None
    label: int | None = None
    metadata: dict | None = None
    error: str | None = None
    unknown_label: str | None = None

    def to_row(self) -> dict[str, Any]:
        """A flat dict for Ray Data / Arrow: metadata as a JSON string (or None)."""
        row = dataclasses.asdict(self)
        row["metadata"] = None if self.metadata is None else dumps_json(self.metadata, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RawRecord:
        """Inverse of `to_row`."""
        meta = row.get("metadata")
        return cls(
            key=row["key"],
            shard=row["shard"],
            data=row.get("data"),
            label=None if row.get("label") is None else int(row["label"]),
            metadata=json.loads(meta) if isinstance(meta, str) else meta,
            error=row.get("error"),
            unknown_label=row.get("unknown_label"),
        )


def shard_format(uri: str) -> str:
    """The format a shard's name implies: wds (.tar/.tgz/.tar.gz), parquet, or folder."""
    lower = uri.lower().rstrip("/")
    if lower.endswith(WDS_SUFFIXES):
        return "wds"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "folder"


def is_image_name(name: str) -> bool:
    """True when a file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return posixpath.splitext(name)[1].lower().lstrip(".") in IMAGE_EXTENSIONS


def discover_shards(
    uri: str, storage_options: Mapping[str, Any] | None = None, options: ReadOptions | None = None
) -> list[Shard]:
    """The shards under `uri` (file, folder/prefix, glob or brace pattern), sorted.

    With format auto the file extensions decide; a mix of tar, Parquet and image files is an
    error (pass a format or a narrower pattern). Image folders become one shard per folder.
    """
    options = options or ReadOptions()
    files = list_shards(uri, storage_options)
    kinds: dict[str, list[str]] = {"wds": [], "parquet": [], "folder": []}
    for f in files:
        kind = shard_format(f)
        if kind != "folder" or is_image_name(f):
            kinds[kind].append(f)
    fmt = options.format
    if fmt == "auto":
        present = [k for k, v in kinds.items() if v]
        if not present:
            raise StorageError(
                f"{uri}: no .tar, .parquet or image files among {len(files)} files "
                f"(e.g. {files[0]}); give the right prefix or pattern, or set format"
            )
        if len(present) > 1:
            counts = ", ".join(f"{len(kinds[k])} {k}" for k in present)
            raise StorageError(
                f"{uri}: found several formats ({counts}); pass format='wds', 'parquet' or "
                "'folder', or a glob such as '*.tar'"
            )
        fmt = present[0]
    chosen = kinds[fmt] or files
    if fmt != "folder":
        return [Shard(f, fmt) for f in chosen]
    return _folder_shards(uri, chosen, storage_options, options)


def _folder_shards(
    uri: str, files: list[str], storage_options: Mapping[str, Any] | None, options: ReadOptions
) -> list[Shard]:
    folders = sorted({posixpath.dirname(f) for f in files})
    if len(files) == 1 and files[0].rstrip("/") == uri.rstrip("/"):
        return [Shard(files[0], "folder")]  # a single image file
    if not options.class_folders:
        return [Shard(d, "folder") for d in folders]
    root = _root_of(uri, storage_options)
    names = {d: _class_of(root, d) for d in folders}
    class_names = options.class_names or tuple(sorted({n for n in names.values() if n is not None}))
    index = {n: i for i, n in enumerate(class_names)}
    unknown = sorted({n for n in names.values() if n is not None and n not in index})
    if unknown and options.strict_classes:
        raise ValueError(
            f"{uri}: {len(unknown)} class folders are not among the {len(class_names)} class names: "
            f"{_abbrev(unknown)}; known: {_abbrev(class_names)}; rename or remove those folders, or "
            "give class names that include them"
        )
    if unknown:
        log.warning("%s: class folders not in class_names get no label: %s", uri, ", ".join(unknown[:10]))
    return [Shard(d, "folder", index.get(names[d]) if names[d] is not None else None) for d in folders]


def class_folder_names(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The class names of an image-folder dataset: the first sub-folder under `uri`'s root of
    every folder that holds images, sorted (the order `ReadOptions(class_folders=True)` numbers
    them in without `class_names`). Empty when the images sit directly under the root."""
    images = [f for f in list_shards(uri, storage_options) if is_image_name(f)]
    root = _root_of(uri, storage_options)
    names = {_class_of(root, folder) for folder in {posixpath.dirname(f) for f in images}}
    return tuple(sorted(n for n in names if n is not None))


def _abbrev(names: Any, limit: int = 10) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _root_of(uri: str, storage_options: Mapping[str, Any] | None) -> str:
    """The folder that class sub-folders hang from: the static part of `uri`."""
    cut = re.search(r"[*?\[{]", uri)
    base = posixpath.dirname(uri[: cut.start()]) if cut else uri.rstrip("/")
    fs, path = filesystem(base, storage_options)
    if not cut and not fs.isdir(path):
        path = posixpath.dirname(path)
    return to_uri(fs, path.rstrip("/"), uri)


def _class_of(root: str, folder: str) -> str | None:
    if not folder.startswith(root + "/"):
        return None
    return folder[len(root) + 1 :].split("/", 1)[0]


def iter_shard_records(
    shard: Shard | str,
    storage_options: Mapping[str, Any] | None = None,
    options: ReadOptions | None = None,
    wanted: Callable[[int], bool] | None = None,
) -> Iterator[RawRecord | None]:
    """Raw records of one shard, streamed; a shard that cannot be read gives error records.

    This is the per-shard unit of work for Ray Data (call it in a task, decode downstream) and
    for plain Python. It never raises for bad data: an unreadable shard yields a record with
    `key == shard.uri` and an error that starts with 'shard:'.

    `wanted` (record ordinal -> bool) reads a piece of the shard: every record still takes its
    place in the stream, but those it declines come as None and their image bytes are not read
    (tar members are skipped by offset, folder files not opened; Parquet still reads its image
    column). Without `wanted` no None is yielded.
    """
    options = options or ReadOptions()
    if isinstance(shard, str):
        shard = Shard(shard, shard_format(shard) if options.format == "auto" else options.format)
    readers = {"wds": _iter_wds, "parquet": _iter_parquet, "folder": _iter_folder}
    mine = wanted or _everything
    if shard.format not in readers:
        yield _shard_error(shard, f"unknown format {shard.format!r}") if mine(0) else None
        return
    count = 0
    try:
        for record in readers[shard.format](shard, storage_options, options, mine):
            yield record if mine(count) else None
            count += 1
    except Exception as exc:  # noqa: BLE001 - the run goes on; this shard reports the failure
        log.warning("%s: shard read failed after %d records: %s", shard.uri, count, exc)
        yield _shard_error(shard, _short_exc(exc)) if mine(count) else None


def _everything(ordinal: int) -> bool:
    return True


def _shard_error(shard: Shard, reason: str) -> RawRecord:
    return RawRecord(key=shard.uri, shard=shard.uri, data=None, label=shard.label, error=f"shard: {reason}")


def _short_exc(exc: BaseException) -> str:
    if isinstance(exc, StorageError):
        text = str(exc)
        return text if len(text) <= 200 else text[:197] + "..."
    text = " ".join(str(exc).split())[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def count_images(
    shard: Shard | str,
    storage_options: Mapping[str, Any] | None = None,
    options: ReadOptions | None = None,
) -> int | None:
    """How many records `iter_shard_records` yields for `shard`, when that is cheap; else None.

    For progress bars, total budgets and done markers ("rows written == count"), so it counts
    what the reader yields, error records included: Parquet from the footer (num_rows; a file
    that is not Parquet or lacks the image/key column is 1 shard error); a local uncompressed
    WebDataset tar by reading its headers only (one per sample key, image or not, plus 1 for a
    truncated or corrupt tail); a folder shard by listing its image files. A remote tar is
    counted only from the `_manifest.json` that `gfpipe synth` writes next to it, and only when
    the manifest lists it with an MD5 equal to the store's ETag (the same bytes); otherwise it
    is None, like a compressed tar: counting those means reading them whole. Storage failures
    (missing file, no permission, unreachable endpoint) raise `StorageError` rather than guess.
    """
    options = options or ReadOptions()
    if isinstance(shard, str):
        shard = Shard(shard, shard_format(shard) if options.format == "auto" else options.format)
    if shard.format == "parquet":
        return _count_parquet(shard.uri, storage_options, options)
    if shard.format == "wds":
        return _count_wds(shard.uri, storage_options)
    if shard.format == "folder":
        return len(_folder_images(shard.uri, storage_options)[1])
    return 1  # the reader yields one "unknown format" error record


def _count_parquet(uri: str, storage_options: Mapping[str, Any] | None, options: ReadOptions) -> int:
    import pyarrow.parquet as pq

    with open_file(uri, "rb", storage_options) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception:  # noqa: BLE001 - the reader yields one "not a Parquet file" record
            return 1
        names = pf.schema_arrow.names
        if options.image_column not in names or (options.key_column and options.key_column not in names):
            return 1
        return pf.metadata.num_rows


def _count_wds(uri: str, storage_options: Mapping[str, Any] | None) -> int | None:
    fs, path = filesystem(uri, storage_options)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "file" not in protocols:
        return _manifest_count(fs, path, uri, storage_options)
    with open_file(uri, "rb", storage_options) as fh:
        if fh.read(2) == b"\x1f\x8b":
            return None  # gzip: counting means decompressing it all
        samples, problem = _index_tar(fh)
    if problem and not samples:
        return 1
    return len(samples) + (1 if problem else 0)


def _manifest_count(fs: Any, path: str, uri: str, storage_options: Mapping[str, Any] | None) -> int | None:
    """The image count `gfpipe synth`'s manifest records for this tar, if it still matches."""
    from gfpipe.data.synthetic import read_manifest

    folder, name = uri.rstrip("/").rsplit("/", 1) if "/" in uri.rstrip("/") else ("", uri)
    try:
        manifest = read_manifest(folder, storage_options) if folder else None
    except ValueError:
        return None
    if not manifest:
        return None
    images = (manifest.get("shard_images") or {}).get(name)
    md5 = (manifest.get("shard_md5") or {}).get(name)
    if not isinstance(images, int) or not isinstance(md5, str):
        return None
    try:
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise storage_error(exc, uri, fs) from exc
    # A single-part upload's ETag is the MD5 of its bytes; multipart or encrypted ones are not.
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    return images if etag == md5.lower() else None


# --- WebDataset -------------------------------------------------------------------------


def _iter_wds(
    shard: Shard, storage_options: Mapping[str, Any] | None, options: ReadOptions, wanted: Callable[[int], bool]
) -> Iterator[RawRecord | None]:
    """Samples grouped by key wherever their members are in the tar (Ray's reader assumes adjacency).

    The tar is indexed first (headers only) and then read sample by sample; a remote or
    compressed tar is first copied to a spooled local temporary file, so memory stays bounded
    and members of one sample may be anywhere in the file.
    """
    with _seekable(shard.uri, storage_options) as fh:
        samples, problem = _index_tar(fh)
        if problem and not samples:
            yield _shard_error(shard, problem)
            return
        for ordinal, (key, parts) in enumerate(samples.items()):
            yield _wds_record(shard, key, parts, fh, options) if wanted(ordinal) else None
        if problem:
            yield _shard_error(shard, problem)


@contextlib.contextmanager
def _seekable(uri: str, storage_options: Mapping[str, Any] | None) -> Iterator[BinaryIO]:
    fs, path = filesystem(uri, storage_options)
    local = "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol)
    with open_file(uri, "rb", storage_options) as src:
        head = src.read(2)
        src.seek(0)
        compressed = head == b"\x1f\x8b"
        if local and not compressed:
            yield src
            return
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as tmp:
            if compressed:
                _gunzip(src, tmp)
            else:
                shutil.copyfileobj(src, tmp, _COPY_CHUNK)
            tmp.seek(0)
            yield tmp


def _gunzip(src: BinaryIO, dst: BinaryIO) -> None:
    """Decompress gzip from src to dst; a truncated stream keeps what was decompressed."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while chunk := src.read(_COPY_CHUNK):
        dst.write(inflater.decompress(chunk))
    dst.write(inflater.flush())


def _index_tar(fh: BinaryIO) -> tuple[OrderedDict[str, dict[str, TarEntry]], str | None]:
    """Map sample key -> {extension: member}, in order of first appearance; plus a problem text.

    Plain tars are listed from their headers (`list_plain_tar`); anything else through tarfile.
    """
    fh.seek(0, 2)
    size = fh.tell()
    members = list_plain_tar(fh, size)
    if members is None:
        return _index_tar_with_tarfile(fh, size)
    samples: OrderedDict[str, dict[str, TarEntry]] = OrderedDict()
    for member in members:
        _add_member(samples, member)
    return samples, None


def _index_tar_with_tarfile(fh: BinaryIO, size: int) -> tuple[OrderedDict[str, dict[str, TarEntry]], str | None]:
    """tarfile's listing. tarfile ends quietly at a header it cannot read after the first (cut
    short, bad checksum) or at a second archive appended to the first; data left after where it
    stopped is reported as a problem, so the shard gets an error record, not a silent loss."""
    samples: OrderedDict[str, dict[str, TarEntry]] = OrderedDict()
    fh.seek(0)
    problem = None
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    problem = f"truncated tar (member {member.name} cut short)"
                    break
                _add_member(samples, member)
            if problem is None and has_data_from(fh, tar.offset, size):
                problem = f"truncated or corrupt tar (unreadable header at byte {tar.offset})"
    except tarfile.ReadError as exc:
        problem = "not a tar file" if not samples else f"truncated or corrupt tar ({exc})"
    except (EOFError, OSError) as exc:
        problem = f"truncated or corrupt tar ({exc})"
    return samples, problem


def _add_member(samples: OrderedDict[str, dict[str, TarEntry]], member: TarEntry) -> None:
    match = _WDS_NAME.match(member.name)
    if not match:
        log.debug("skipping tar member without key.extension name: %s", member.name)
        return
    key, ext = match.group(1), match.group(2).lower()
    samples.setdefault(key, {})[ext] = member


def _wds_record(shard: Shard, key: str, parts: dict[str, TarEntry], fh: BinaryIO, options: ReadOptions) -> RawRecord:
    record_key = f"{shard.uri}#{key}"
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in parts), None)
    metadata = None
    label, unknown = None, None
    if "json" in parts:
        try:
            metadata = json.loads(_member_bytes(fh, parts["json"]))
        except ValueError:
            log.debug("%s: unreadable json member", record_key)
        if isinstance(metadata, dict):
            label, unknown = _label_value(metadata.get("label"), options)
    for ext in LABEL_EXTENSIONS:
        if ext in parts:
            text = _member_bytes(fh, parts[ext]).decode("utf-8", "replace").strip()
            label, unknown = _label_value(text, options)
            break
    if image_ext is None:
        has = ", ".join(sorted(parts))
        return RawRecord(record_key, shard.uri, None, label, metadata, f"no image member (has: {has})", unknown)
    data = _member_bytes(fh, parts[image_ext])
    return RawRecord(record_key, shard.uri, data, label, metadata, None, unknown)


def _member_bytes(fh: BinaryIO, member: TarEntry) -> bytes:
    fh.seek(member.offset_data)
    return fh.read(member.size)


# --- Parquet ----------------------------------------------------------------------------


def _iter_parquet(
    shard: Shard, storage_options: Mapping[str, Any] | None, options: ReadOptions, wanted: Callable[[int], bool]
) -> Iterator[RawRecord | None]:
    """Rows streamed batch by batch (never the whole file); only the needed columns are read."""
    import pyarrow.parquet as pq

    with open_file(shard.uri, "rb", storage_options) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid and friends
            yield _shard_error(shard, f"not a Parquet file ({_short_exc(exc)})")
            return
        names = pf.schema_arrow.names
        if options.image_column not in names:
            yield _shard_error(
                shard,
                f"no image column {options.image_column!r} (columns: {', '.join(names[:12])}); set image_column",
            )
            return
        if options.key_column and options.key_column not in names:
            yield _shard_error(shard, f"no key column {options.key_column!r}; set key_column=None for row keys")
            return
        optional = [options.label_column, options.key_column, options.metadata_column]
        columns = [options.image_column] + [c for c in optional if c and c in names and c != options.image_column]
        row = 0
        for batch in pf.iter_batches(batch_size=options.parquet_batch_rows, columns=columns):
            cols = {name: batch.column(name).to_pylist() for name in columns}
            for i in range(batch.num_rows):
                values = {name: column[i] for name, column in cols.items()}
                yield _parquet_record(shard, row, values, options) if wanted(row) else None
                row += 1


def _parquet_record(shard: Shard, row: int, values: dict[str, Any], options: ReadOptions) -> RawRecord:
    key_value = values.get(options.key_column) if options.key_column else None
    key = str(key_value) if key_value is not None else f"{shard.uri}#{row}"
    label, unknown = _label_value(values.get(options.label_column), options) if options.label_column else (None, None)
    metadata = None
    if options.metadata_column and values.get(options.metadata_column) is not None:
        raw = values[options.metadata_column]
        try:
            metadata = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except ValueError:
            log.debug("%s: unreadable metadata", key)
    if isinstance(metadata, dict) and label is None and unknown is None:
        label, unknown = _label_value(metadata.get("label"), options)
    data = values[options.image_column]
    if isinstance(data, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        data = data.get("bytes")
    if data is None:
        return RawRecord(key, shard.uri, None, label, metadata, "no image bytes (null)", unknown)
    if not isinstance(data, (bytes, bytearray)):
        error = f"image column holds {type(data).__name__}, not bytes"
        return RawRecord(key, shard.uri, None, label, metadata, error, unknown)
    return RawRecord(key, shard.uri, bytes(data), label, metadata, None, unknown)


# --- Folders ----------------------------------------------------------------------------


def _iter_folder(
    shard: Shard, storage_options: Mapping[str, Any] | None, options: ReadOptions, wanted: Callable[[int], bool]
) -> Iterator[RawRecord | None]:
    """The image files directly in one folder (or one image file), in name order."""
    fs, names = _folder_images(shard.uri, storage_options)
    for ordinal, name in enumerate(names):
        if not wanted(ordinal):
            yield None
            continue
        uri = to_uri(fs, name, shard.uri)
        try:
            data = fs.cat_file(name)
        except Exception as exc:  # noqa: BLE001 - one unreadable file is one error row
            yield RawRecord(
                uri,
                shard.uri,
                None,
                shard.label,
                None,
                f"read failed: {_short_exc(storage_error(exc, uri, fs))}",
            )
            continue
        yield RawRecord(uri, shard.uri, data, shard.label)


def _folder_images(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, list[str]]:
    """The filesystem and the sorted image paths a folder shard reads (hidden names skipped)."""
    fs, path = filesystem(uri, storage_options)
    try:
        entries = fs.ls(path.rstrip("/"), detail=True)
    except Exception as exc:  # noqa: BLE001
        raise storage_error(exc, uri, fs) from exc
    names = sorted(
        e["name"]
        for e in entries
        if e.get("type") == "file"
        and is_image_name(e["name"])
        and not posixpath.basename(e["name"]).startswith((".", "_"))
    )
    return fs, names


def _label_value(value: Any, options: ReadOptions) -> tuple[int | None, str | None]:
    """(label, unknown text): an int label from an int, a numeric string or a class name
    (negative or empty means unlabelled); a text that is neither comes back as unknown."""
    if value is None or isinstance(value, bool):
        return None, None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None, None
        if options.class_names and text in options.class_names:
            return options.class_names.index(text), None
        try:
            value = int(text)
        except ValueError:
            return None, text
    try:
        label = int(value)
    except (TypeError, ValueError):
        return None, None
    return (label if label >= 0 else None), None


# --- Decoding and the plain-Python entry point --------------------------------------------


def decode_record(
    record: RawRecord,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> dict[str, Any]:
    """A raw record decoded: key, shard, image (H, W, 3 uint8 or None), label, error, width,
    height, metadata, unknown_label (see `RawRecord`). Never raises."""
    image, error, size = (None, record.error, None)
    if record.error is None:
        image, error, size = decode_image(record.data, max_pixels=max_pixels, draft_size=draft_size)
    return {
        "key": record.key,
        "shard": record.shard,
        "image": image,
        "label": record.label,
        "error": error,
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "metadata": record.metadata,
        "unknown_label": record.unknown_label,
    }


def read_images(
    uri: str | Sequence[Shard],
    storage_options: Mapping[str, Any] | None = None,
    *,
    options: ReadOptions | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    **overrides: Any,
) -> Iterator[dict[str, Any]]:
    """Every image under `uri`, decoded, one dict per image (see `decode_record`), in shard order.

    `uri` may also be the shards `discover_shards` found (to list once and read later).
    Keyword overrides set `ReadOptions` fields, e.g. `read_images(u, format="parquet",
    image_column="img")`. Bad images and unreadable shards come back as rows with `error` set.
    """
    options = dataclasses.replace(options or ReadOptions(), **overrides)
    shards = discover_shards(uri, storage_options, options) if isinstance(uri, str) else uri
    for shard in shards:
        for record in iter_shard_records(shard, storage_options, options):
            yield decode_record(record, max_pixels=max_pixels, draft_size=draft_size)
