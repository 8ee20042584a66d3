"""The output rows' Parquet schema, and writing one part file so that readers never see half of it.

Every input image yields exactly one row (DESIGN.md, "Output rows"); an image that could not be
read, decoded or classified is a row with `error` set and the prediction fields null.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gfpipe.data.io import filesystem, storage_error

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("topk_labels", pa.list_(pa.int32())),
        pa.field("topk_probs", pa.list_(pa.float32())),
        pa.field("exit_step", pa.int16(), nullable=False),
        pa.field("macs", pa.float64(), nullable=False),
        pa.field("glimpses", pa.list_(pa.list_(pa.int32()))),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("node", pa.string(), nullable=False),
    ]
)
"""Output row schema: `glimpses` holds the focus patches' top-left (row, col) corners in pixels of
the model input, in step order; `exit_step` 0 means the image never reached the model (error)."""


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with SCHEMA's fields) -> an Arrow table in SCHEMA's column order."""
    columns = {field.name: [row.get(field.name) for row in rows] for field in SCHEMA}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def write_part(uri: str, rows: Sequence[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None) -> None:
    """Write one part file whole or not at all.

    Locally: a hidden temp file in the same folder, then a rename (atomic on POSIX). On object
    storage a PUT (or a multipart upload, completed at close) is what makes an object visible,
    so the object appears whole. A kill mid-write can leave a hidden temp file, never a part.
    """
    table = rows_table(rows)
    fs, path = filesystem(uri, storage_options)
    folder, name = path.rsplit("/", 1)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    try:
        if local:
            fs.makedirs(folder, exist_ok=True)
            temp = f"{folder}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
            with fs.open(temp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
            os.replace(temp, path)
        else:
            with fs.open(path, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
    except Exception as exc:  # noqa: BLE001 - translated
        raise storage_error(exc, uri, fs) from exc


def read_rows(uri: str, storage_options: Mapping[str, Any] | None = None, columns: Sequence[str] | None = None):
    """Every part file under an output folder as one Arrow table (for tests, the report, users).

    Only `part-*.parquet` files in shard folders count: `_gfpipe/`, the report and temp files
    left by a killed writer are not rows.
    """
    import pyarrow.dataset as ds

    from gfpipe.classify.layout import STATE_DIR, parse_part

    fs, path = filesystem(uri, storage_options)
    base = path.rstrip("/")
    files = sorted(
        f
        for f in fs.find(base)
        if parse_part(f) is not None and not f[len(base) :].lstrip("/").startswith(STATE_DIR + "/")
    )
    if not files:
        return SCHEMA.empty_table().select(list(columns)) if columns else SCHEMA.empty_table()
    dataset = ds.dataset(files, filesystem=fs, format="parquet", schema=SCHEMA)
    return dataset.to_table(columns=list(columns) if columns else None)
