"""The classify job's CPU stage: one task per shard (or piece of a large shard) reads, decodes and
preprocesses its images.

Each record becomes one row, good or bad: {"key", "shard" (URI), "sid" (shard id), "ordinal"
(position in the shard's reading order), "image" uint8 (3, S, S) (zeros for a bad record),
"width"/"height" (original size, -1 when unknown), "error" ("" when fine)}. Images travel as
uint8 at the model's input size (a quarter of float32); the model actor normalises them on its
device. The UDF never raises for bad data (RAY_NOTES.md: a raising UDF fails the whole dataset, or
with retries on errors drops the rest of the block): a record that cannot be read or decoded is
an error row, and a shard that cannot be opened is one error row standing for the shard.
After the last record the task writes how many records the shard held, which is what the driver
checks the shard's parts against before it marks the shard done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from gfpipe.classify.layout import OutputLayout
from gfpipe.classify.state import in_piece
from gfpipe.config import Preprocessing
from gfpipe.data.decode import decode_uint8
from gfpipe.data.io import dumps_json, write_bytes
from gfpipe.data.shards import ReadOptions, Shard, iter_shard_records

log = logging.getLogger(__name__)

ROWS_PER_BLOCK = 32  # images per yielded batch: small blocks keep the actors fed early


def read_shards(
    batch: Mapping[str, np.ndarray],
    *,
    output: str,
    storage_options: Mapping[str, Any] | None,
    read_options: ReadOptions,
    preprocessing: Preprocessing,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: shard pieces {"uri", "format", "sid", "piece", "pieces"} -> image rows (see
    the module doc). A piece reads every `pieces`-th chunk of the shard's records, starting at
    chunk `piece` (`gfpipe.classify.state.in_piece`); every piece counts all the records, and
    piece 0 writes the count."""
    layout = OutputLayout(output, storage_options)
    crop = preprocessing.crop
    pieces = zip(batch["uri"], batch["format"], batch["sid"], batch["piece"], batch["pieces"], strict=True)
    for uri, fmt, sid, piece, of in pieces:
        shard = Shard(str(uri), str(fmt))
        rows: list[dict[str, Any]] = []
        count = 0
        wanted = in_piece(int(piece), int(of))
        for ordinal, record in enumerate(iter_shard_records(shard, storage_options, read_options, wanted)):
            count = ordinal + 1
            if record is None:  # another piece's record
                continue
            image, error, size = None, record.error, None
            if error is None:
                image, error, size = decode_uint8(record.data, preprocessing)
            rows.append(
                {
                    "key": record.key,
                    "ordinal": ordinal,
                    "image": image,
                    "width": size[0] if size else -1,
                    "height": size[1] if size else -1,
                    "error": error or "",
                }
            )
            if len(rows) >= ROWS_PER_BLOCK:
                yield _block(rows, str(uri), str(sid), crop)
                rows = []
        if rows:
            yield _block(rows, str(uri), str(sid), crop)
        if int(piece) == 0:  # every piece counts the same records; one writes the count
            write_bytes(
                layout.records_uri(str(sid)), dumps_json({"uri": str(uri), "records": count}).encode(), storage_options
            )


def _block(rows: list[dict[str, Any]], uri: str, sid: str, crop: int) -> dict[str, np.ndarray]:
    n = len(rows)
    images = np.zeros((n, 3, crop, crop), np.uint8)
    for i, row in enumerate(rows):
        if row["image"] is not None:
            images[i] = row["image"]
    return {
        "key": np.array([r["key"] for r in rows], dtype=object),
        "shard": np.array([uri] * n, dtype=object),
        "sid": np.array([sid] * n, dtype=object),
        "ordinal": np.array([r["ordinal"] for r in rows], np.int64),
        "image": images,
        "width": np.array([r["width"] for r in rows], np.int32),
        "height": np.array([r["height"] for r in rows], np.int32),
        "error": np.array([r["error"] for r in rows], dtype=object),
    }
