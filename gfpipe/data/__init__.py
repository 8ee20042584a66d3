"""Image shards over fsspec (local, file://, s3://), robust decoding, the synthetic dataset.

`read_images(uri)` is the plain-Python way in: one dict per image (key, shard, image, label,
error, width, height, metadata). The Ray pipeline reuses the same pieces per shard:
`discover_shards` on the driver, `iter_shard_records` in a read task, `decode_record` /
`decode_preprocess` in a decode stage. Nothing here imports Ray. (The submodules keep their
names: `gfpipe.data.decode.decode` is the non-raising decoder.)
"""

from gfpipe.data.decode import DEFAULT_MAX_PIXELS, decode_preprocess, preprocess, preprocess_batch
from gfpipe.data.io import (
    NoShardsError,
    StorageConnectionError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    filesystem,
    list_shards,
    open_file,
)
from gfpipe.data.shards import (
    RawRecord,
    ReadOptions,
    Shard,
    decode_record,
    discover_shards,
    iter_shard_records,
    read_images,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "NoShardsError",
    "RawRecord",
    "ReadOptions",
    "Shard",
    "StorageConnectionError",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "decode_preprocess",
    "decode_record",
    "discover_shards",
    "filesystem",
    "iter_shard_records",
    "list_shards",
    "open_file",
    "preprocess",
    "preprocess_batch",
    "read_images",
]
