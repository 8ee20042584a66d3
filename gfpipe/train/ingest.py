"""Ray Data ingest for training: shards -> decoded, labelled rows, with dropped images counted.

One task per shard runs `iter_shard_records` and decodes each record (`decode_for_training` /
`decode_for_eval`) into rows {"image": uint8 (3, H, W), "label": the model's class index}.
Unreadable or unlabelled images are dropped, never raised, and counted per shard in a small
ledger actor (`DropLedger`; reported per epoch and in the checkpoint). Training shards are
shuffled cheaply: the shard order per epoch (`randomize_block_order` on the shard list, before
any image is read) here, and a local shuffle buffer in the worker's `iter_torch_batches`.
Ray Data runs a dataset again for every epoch, and that start (a barrier of every worker, a new
executor, the first decoded shard) cost 0.6 s of a 5 s epoch on 2 cores; so the training split
is given to Ray Train twice (`TRAIN_DATASETS`), epochs alternate between the two, and a worker
starts reading epoch e+1 from one while it trains epoch e from the other.
`ingest_config` splits the train data equally per worker (DDP needs equal batch counts);
validation and calibration are split without dropping rows.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gfpipe.data.labels import LabelMap
from gfpipe.data.shards import ReadOptions, Shard, iter_shard_records
from gfpipe.train.decoding import decode_for_eval, decode_for_training

if TYPE_CHECKING:  # both import the model (torch); the decode tasks that import this module must not
    from gfpipe.train.config import TrainConfig
    from gfpipe.train.plan import Split

log = logging.getLogger(__name__)

_DECODE_CHUNK = 64  # images per yielded batch of the decode task
TRAIN_DATASETS = ("train", "train_alternate")
"""Ray Train dataset names of the training split: epochs alternate between two copies, so the
next epoch's input can start while this one trains (`train_dataset_name`)."""


def train_dataset_name(epoch_index: int) -> str:
    """The dataset of the run's `epoch_index`-th epoch to train (counted over all stages)."""
    return TRAIN_DATASETS[epoch_index % 2]


class DropLedger:
    """Images dropped while decoding, per (split, shard): a re-read shard replaces its tally
    (every epoch reads the shards again), so the totals count each bad image once."""

    def __init__(self) -> None:
        self.tally: dict[tuple[str, str], tuple[int, dict[str, int], list[str]]] = {}

    def record(self, split: str, shard: str, count: int, reasons: dict[str, int], examples: list[str]) -> None:
        self.tally[(split, shard)] = (count, reasons, examples)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (split, _), (count, reasons, examples) in sorted(self.tally.items()):
            entry = out.setdefault(split, {"images": 0, "reasons": {}, "examples": []})
            entry["images"] += count
            for reason, n in reasons.items():
                entry["reasons"][reason] = entry["reasons"].get(reason, 0) + n
            entry["examples"] = (entry["examples"] + examples)[:5]
        return {k: v for k, v in out.items() if v["images"]}


def dataset(
    split: Split,
    config: TrainConfig,
    options: Mapping[str, Any] | None,
    ledger: str,
    decode_tasks: int = 1,
    seed_offset: int = 0,
) -> Any:
    """The split as a Ray Data dataset of decoded rows. Decode tasks reserve no CPU and run at most
    `decode_tasks` at a time (the CPUs the workers leave): a task that needed a whole CPU could
    wait forever on a cluster whose workers leave only fractions of a CPU on each node (two 2-CPU
    nodes, a worker of 1.5 CPUs on each), as the classify job's read tasks (RAY_NOTES.md)."""
    import ray.data

    items = [{"uri": s.uri, "format": s.format, "label": -1 if s.label is None else int(s.label)} for s in split.shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if split.name == "train":
        seed = ray.data.RandomSeedConfig(seed=config.seed + seed_offset, reseed_after_execution=True)
        ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(
        decode_shards,
        batch_size=1,
        num_cpus=0,
        concurrency=max(1, decode_tasks),
        fn_kwargs={
            "split": split.name,
            "storage_options": options,
            "read_options": split.read_options,
            "label_map": split.label_map,
            "preprocessing": config.preprocessing,
            "training": split.name == "train",
            "ledger": ledger,
        },
    )
    if split.limit is not None:
        ds = ds.limit(split.limit)
    return ds


def decode_shards(
    batch: Mapping[str, np.ndarray],
    *,
    split: str,
    storage_options: Mapping[str, Any] | None,
    read_options: ReadOptions,
    label_map: LabelMap,
    preprocessing: Any,
    training: bool,
    ledger: Any = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: shard rows {"uri", "format", "label"} -> batches {"image": uint8 (n, 3, H, W),
    "label": int64 (n,)} in the model's class indices. Never raises for bad data: unreadable,
    unlabelled or wrongly labelled images are dropped and tallied in the `ledger` (the name of
    a `DropLedger` actor, or a `DropLedger` itself)."""
    decode = decode_for_training if training else decode_for_eval
    for uri, fmt, shard_label in zip(batch["uri"], batch["format"], batch["label"], strict=True):
        shard = Shard(str(uri), str(fmt), None if int(shard_label) < 0 else int(shard_label))
        images: list[np.ndarray] = []
        labels: list[int] = []
        dropped, reasons, examples = 0, {}, []
        for record in iter_shard_records(shard, storage_options, read_options):
            reason, label = _record_label(record, label_map)
            array = None
            if reason is None:
                array, reason = decode(record.data, preprocessing)
            if array is None:
                dropped += 1
                kind = (reason or "unreadable").split(":", 1)[0][:60]
                reasons[kind] = reasons.get(kind, 0) + 1
                if len(examples) < 3:
                    examples.append(f"{record.key}: {reason}")
                continue
            images.append(array)
            labels.append(label)
            if len(images) >= _DECODE_CHUNK:
                yield _rows(images, labels)
                images, labels = [], []
        if images:
            yield _rows(images, labels)
        if dropped:
            log.debug("%s: dropped %d images (%s)", shard.uri, dropped, examples[0])
        _tally(ledger, split, shard.uri, dropped, reasons, examples)


def _record_label(record: Any, label_map: LabelMap) -> tuple[str | None, int]:
    if record.error is not None:
        return record.error, -1
    try:
        label = label_map.record_label(record)
    except ValueError as exc:
        return f"bad label: {' '.join(str(exc).split())[:200]}", -1
    if label < 0:
        return "no label", -1
    return None, label


def _rows(images: list[np.ndarray], labels: list[int]) -> dict[str, np.ndarray]:
    return {"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)}


def _tally(ledger: Any, split: str, shard: str, count: int, reasons: dict[str, int], examples: list[str]) -> None:
    if ledger is None:
        return
    if not isinstance(ledger, str):  # a DropLedger in this process (plain Python, tests)
        ledger.record(split, shard, count, reasons, examples)
        return
    try:
        import ray

        ray.get_actor(ledger).record.remote(split, shard, count, reasons, examples)
    except Exception as exc:  # noqa: BLE001 - counting must never fail the read
        log.debug("drop ledger %s unavailable: %s", ledger, exc)


def ingest_config() -> Any:
    """Train split equally per worker (DDP needs the same number of batches on every rank);
    validation and calibration split without dropping rows."""
    from ray.train import DataConfig

    class _IngestConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # noqa: ANN001
            from ray.data import DataContext, ExecutionOptions

            output = [{} for _ in range(world_size)]
            hints = worker_node_ids if self._enable_shard_locality else None
            current = DataContext.get_current().execution_options
            for name, ds in datasets.items():
                if ds.name is None:
                    ds.set_name(name)
                ds = ds.copy(ds)
                # DataConfig's defaults without the deprecated exclude_resources (which warns)
                ds.context.execution_options = ExecutionOptions(
                    resource_limits=copy.deepcopy(current.resource_limits),
                    preserve_order=current.preserve_order,
                    verbose_progress=False,
                )
                splits = ds.streaming_split(world_size, equal=name in TRAIN_DATASETS, locality_hints=hints)
                for rank, split in enumerate(splits):
                    output[rank][name] = split
            return output

    return _IngestConfig()
