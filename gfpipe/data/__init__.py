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
    check_storage_options,
    ensure_writable,
    filesystem,
    list_shards,
    open_file,
    write_json,
)
from gfpipe.data.labels import LabelMap, dataset_class_names
from gfpipe.data.shards import (
    RawRecord,
    ReadOptions,
    Shard,
    count_images,
    decode_record,
    discover_shards,
    iter_shard_records,
    read_images,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LabelMap",
    "NoShardsError",
    "RawRecord",
    "ReadOptions",
    "Shard",
    "StorageConnectionError",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "check_storage_options",
    "count_images",
    "dataset_class_names",
    "decode_preprocess",
    "decode_record",
    "discover_shards",
    "ensure_writable",
    "filesystem",
    "iter_shard_records",
    "list_shards",
    "open_file",
    "preprocess",
    "preprocess_batch",
    "read_images",
    "write_json",
]
