"""Training on a Ray cluster: checks, Ray Data inputs, the TorchTrainer, resume, the final checkpoint.

`train(config)` runs a whole training:
1. `prepare_run` checks everything a user can get wrong before any Ray work: the config, that
   train/val (and calibration) shards exist, their class names (from `data.class_names`, else
   the data's classes.txt or class folders; the splits must agree), the model's num_classes,
   that the run storage and the output folder can be written, and whether this run (same name
   and storage) already started or finished.
2. Ray Data reads the shards: one task per shard runs `iter_shard_records` and decodes each
   record (`decode_for_training` / `decode_for_eval`) into rows {"image": uint8 (3, H, W),
   "label": the model's class index}. Unreadable or unlabelled images are dropped, never
   raised, and counted per shard in a small ledger actor (reported per epoch and in the
   checkpoint). Training shards are shuffled cheaply: the shard order per epoch
   (`randomize_block_order` on the shard list, before any image is read) and a local
   shuffle buffer in `iter_torch_batches`.
3. A `TorchTrainer` (Ray Train V2) runs `train_loop_per_worker` on N workers (gloo on CPU,
   NCCL on GPU), sized so workers plus the decode stage fit the cluster (RAY_NOTES.md: an
   over-asked 2-CPU cluster hangs). The train split is equal per worker (DDP needs equal batch
   counts); validation and calibration are split without dropping rows.
4. Per worker: a `Trainer` (gfpipe.train.loops) runs each stage's epochs; per epoch the sums
   are all-reduced, rank 0 logs a line, and every rank calls `ray.train.report` once, rank 0
   with the checkpoint (trainer state + per-epoch history).
5. After the last stage: exit scores of every step on held-out data (`data.calibration`, else
   val), gathered to rank 0, which writes the final gfpipe checkpoint (ModelCard with class
   names, preprocessing, calibration, provenance) into the last Ray checkpoint; the driver
   copies it to `run.output` with `save_checkpoint` (so the output may be local to the
   driver or on object storage) and marks the run finished.

Resume: re-running with the same `run.name` and `run.storage` continues from the last
checkpoint (Ray finds the run's snapshot; `ray.train.get_checkpoint()` returns it), skipping the
epochs already done; a worker failure restarts the worker group from the last checkpoint
(`run.max_failures`). A finished run is not trained again (`restart=True` starts over).

Test hook (not for users): the environment variable `GFPIPE_TRAIN_FAULT` in the driver makes a
worker fail on purpose, e.g. `kill-worker:rank=1:stage=stage1:epoch=1:marker=/tmp/m` (that rank
exits mid-epoch, once: the marker file records it) or `kill-driver:stage=stage1:epoch=0` (rank 0
kills the driver process after that epoch's checkpoint is committed).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import posixpath
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from fsspec.core import split_protocol

from gfpipe.checkpoint import load_checkpoint, save_checkpoint
from gfpipe.config import ConfigError
from gfpipe.data.io import ensure_writable, filesystem, join_uri, list_shards, read_bytes, write_json
from gfpipe.data.labels import LabelMap, dataset_class_names
from gfpipe.data.shards import ReadOptions, Shard, class_folder_names, discover_shards, iter_shard_records
from gfpipe.model.gfnet import GFNet, GFNetConfig, ModelCard
from gfpipe.train.config import TrainConfig, config_dict
from gfpipe.train.data import decode_for_eval, decode_for_training
from gfpipe.train.init import initialise

log = logging.getLogger(__name__)

RUN_RECORD = "gfpipe-run.json"
"""Written in the run folder when a run starts: the resolved config and class names."""

DONE_RECORD = "gfpipe-done.json"
"""Written in the run folder when a run has finished: where its checkpoint is."""

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
FAULT_ENV = "GFPIPE_TRAIN_FAULT"
_STAGES = ("stage0", "stage1", "stage2", "stage3")  # Trainer.STAGES, without importing the loops here

# Config keys that may change between a run and its resumption (how it runs, not what it trains).
_RESUMABLE_CHANGES = (
    "scaling.",
    "run.max_failures",
    "run.keep_checkpoints",
    "run.output",
    "log_every",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DECODE_CHUNK = 64  # images per yielded batch of the decode task


# ---------------------------------------------------------------------------------------------
# The plan: everything checked before Ray does any work
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """One labelled input: its URI, shards, how to read them and how labels map to the model."""

    name: str  # train, val, calibration
    uri: str
    shards: tuple[Shard, ...]
    read_options: ReadOptions
    label_map: LabelMap
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A checked training run (see `prepare_run`); `train` takes it as it is."""

    config: TrainConfig  # model.num_classes set from the class names; local URIs absolute
    class_names: tuple[str, ...]
    splits: dict[str, Split]
    run_dir: str  # STORAGE/NAME
    output: str
    storage_options: dict[str, Any] | None
    state: str  # "new", "started" (will resume) or "finished"
    restart: bool = False  # start over: the run folder is removed before training

    @property
    def name(self) -> str:
        return self.config.run.name


def prepare_run(
    config: TrainConfig, storage_options: Mapping[str, Any] | None = None, restart: bool = False
) -> RunPlan:
    """Check a training config against its data and storage; raise ValueError/OSError naming the fix.

    Reads only listings, classes.txt files and the run folder's records: no image is decoded
    and Ray is not needed.
    """
    config = config.check()
    options = dict(storage_options) if storage_options else None
    if not _NAME.match(config.run.name):
        raise ConfigError(
            f"run.name {config.run.name!r} must be a plain folder name (letters, digits, '.', '_', '-'), "
            "e.g. glyphs-resnet50"
        )
    if config.preprocessing.crop != config.model.input_size:
        raise ConfigError(
            f"preprocessing.crop {config.preprocessing.crop} must equal model.input_size "
            f"{config.model.input_size}: the model sees the crop"
        )
    if not config.run.storage:
        raise ConfigError(
            "run.storage is empty; set it (--storage) to a folder or an s3://bucket/prefix that every node can reach"
        )
    data = config.data
    storage = _absolute(config.run.storage)
    run_dir = join_uri(storage, config.run.name)
    output = _absolute(config.run.output) if config.run.output else join_uri(run_dir, MODEL_FILE)
    data = dataclasses.replace(
        data,
        train=_absolute(data.train),
        val=_absolute(data.val),
        calibration=_absolute(data.calibration) if data.calibration else None,
    )
    uris = {"train": data.train, "val": data.val}
    if data.calibration:
        uris["calibration"] = data.calibration
    for uri in uris.values():
        list_shards(uri, options)  # a missing or empty location is the first thing to say
    for key in ("checkpoint", "encoders", "global_encoder"):
        uri = getattr(config.init, key)
        if uri and list_shards(_absolute(uri), options) != [_absolute(uri)]:
            raise ValueError(f"init.{key} {uri} is not a single file; give the URI of a weights file")
    declared = {split: _declared_classes(uri, data.class_folders, options) for split, uri in uris.items()}
    class_names = tuple(data.class_names) if data.class_names else declared["train"]
    if not class_names:
        raise ValueError(
            f"{data.train}: no class names: the data has no classes.txt"
            f"{'' if data.class_folders else ' (and data.class_folders is off)'}; set data.class_names "
            "(e.g. --set 'data.class_names=[cat, dog]'), add a classes.txt (line i names label i), "
            "or use class folders (data.class_folders: true)"
        )
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"data.class_names has repeated names: {_abbrev(class_names)}")
    reference = ("data.class_names", "the config") if data.class_names else ("train", data.train)
    for split, names in declared.items():
        if names is None or (split == "train" and not data.class_names):
            continue
        if set(names) != set(class_names):
            raise ValueError(_class_mismatch(reference, class_names, (split, uris[split]), names))
    default_classes = GFNetConfig().num_classes
    if config.model.num_classes not in (default_classes, len(class_names)):
        raise ConfigError(
            f"model.num_classes is {config.model.num_classes} but the data has {len(class_names)} classes "
            f"({_abbrev(class_names)}); remove model.num_classes (it is set from the class names) or fix the data"
        )
    model_config = dataclasses.replace(config.model, num_classes=len(class_names))
    init = {k: _absolute(v) for k, v in dataclasses.asdict(config.init).items() if v}
    config = dataclasses.replace(
        config,
        model=model_config,
        init=dataclasses.replace(config.init, **init),
        data=dataclasses.replace(data, class_names=tuple(class_names)),
        run=dataclasses.replace(config.run, storage=storage, output=output),
    )
    GFNet(model_config, ModelCard(tuple(class_names), config.preprocessing))  # architecture errors now
    splits = {split: _split(split, uri, declared[split], class_names, config, options) for split, uri in uris.items()}
    if "calibration" not in splits:
        val = splits["val"]
        splits["calibration"] = dataclasses.replace(val, name="calibration", limit=data.max_calibration_images)
    ensure_writable(storage, options)
    output_folder = posixpath.dirname(output.rstrip("/"))
    if output_folder and output_folder != run_dir:
        ensure_writable(output_folder, options)
    state = _run_state(config, run_dir, options, restart)
    return RunPlan(config, tuple(class_names), splits, run_dir, output, options, state, restart)


def _split(
    split: str,
    uri: str,
    declared: tuple[str, ...] | None,
    class_names: tuple[str, ...],
    config: TrainConfig,
    options: Mapping[str, Any] | None,
) -> Split:
    data = config.data
    label_map = LabelMap.build(class_names, None if data.class_folders else declared)
    read_options = ReadOptions(
        format=data.format,
        class_folders=data.class_folders,
        class_names=label_map.read_class_names,
        strict_classes=data.class_folders,
    )
    shards = discover_shards(uri, options, read_options)
    if data.class_folders and any(shard.format != "folder" for shard in shards):
        raise ValueError(
            f"data.class_folders is for image folders, but {uri} holds {shards[0].format} shards "
            "(their labels come from the shards and classes.txt); set data.class_folders: false"
        )
    limit = {"val": data.max_val_images, "calibration": data.max_calibration_images}.get(split)
    return Split(split, uri, tuple(shards), read_options, label_map, limit)


def _declared_classes(uri: str, class_folders: bool, options: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    if class_folders:
        return class_folder_names(uri, options) or None
    return dataset_class_names(uri, options)


def _class_mismatch(a: tuple[str, str], a_names: Sequence[str], b: tuple[str, str], b_names: Sequence[str]) -> str:
    """Two sets of class names that differ, each (label, where) named, the differences first."""
    only_a = [n for n in a_names if n not in set(b_names)]
    only_b = [n for n in b_names if n not in set(a_names)]
    return (
        f"the classes of {a[0]} ({a[1]}) and {b[0]} ({b[1]}) differ: only in {a[0]}: {_abbrev(only_a) or 'none'}; "
        f"only in {b[0]}: {_abbrev(only_b) or 'none'} ({a[0]}: {_abbrev(a_names)}; {b[0]}: {_abbrev(b_names)}); "
        "train, val and calibration data must name the same classes (fix their classes.txt or folders)"
    )


def _abbrev(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers run in other folders); other URIs as they are."""
    protocol, path = split_protocol(uri)
    if protocol not in (None, "file", "local"):
        return uri
    return os.path.abspath(os.path.expanduser(path))


def _run_state(config: TrainConfig, run_dir: str, options: Mapping[str, Any] | None, restart: bool) -> str:
    """The run's state in its folder: new, started (resume) or finished. A run started with
    another config is an error (a resume would load state that does not fit it)."""
    record = _read_json(join_uri(run_dir, RUN_RECORD), options)
    if record is None or restart:
        return "new"
    changes = _config_changes(record.get("config") or {}, config_dict(config))
    if changes:
        raise ValueError(
            f"run {config.run.name!r} in {config.run.storage} was started with another config "
            f"({'; '.join(changes[:5])}{'; ...' if len(changes) > 5 else ''}); resume it with the same "
            "config, choose another run.name (--name), or start it over (--restart)"
        )
    done = _read_json(join_uri(run_dir, DONE_RECORD), options)
    return "started" if done is None else "finished"


def _config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += _config_changes(a, b, f"{path}.")
        elif a != b and not any(path.startswith(p) for p in _RESUMABLE_CHANGES):
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


def _read_json(uri: str, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    try:
        return json.loads(read_bytes(uri, options))
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def init_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` or RAY_ADDRESS, else start a local Ray on all CPUs;
    Ray's own INFO chatter stays off the console."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, **kwargs)


def worker_resources(
    num_workers: int, use_gpu: bool, cpus_per_worker: float | None, cluster: Mapping[str, float]
) -> dict[str, float]:
    """Resources per Train worker that leave at least one CPU for the decode stage.

    Without `cpus_per_worker`: GPU workers take 1 CPU each (decoding needs the rest), CPU
    workers share all CPUs but one. Asking for more than the cluster has is a ValueError.
    """
    cpus = float(cluster.get("CPU", 0.0))
    if use_gpu and float(cluster.get("GPU", 0.0)) < num_workers:
        raise ValueError(
            f"{num_workers} GPU workers need {num_workers} GPUs, but the cluster has "
            f"{int(cluster.get('GPU', 0))}; lower scaling.num_workers (--workers) or train on CPU (no --gpu)"
        )
    spare = cpus - 1.0  # the decode stage's CPU
    if cpus_per_worker is None:
        if spare <= 0:
            raise ValueError(
                f"the cluster has {cpus:g} CPUs; training needs more than 1 (one for decoding, the rest for workers)"
            )
        share = spare / num_workers
        per = min(1.0, share) if use_gpu else share
        per = math.floor(per * 100) / 100
        if per <= 0:
            raise ValueError(
                f"{num_workers} workers do not fit in the {spare:g} CPUs left beside the decode stage; "
                "lower scaling.num_workers (--workers)"
            )
    else:
        per = float(cpus_per_worker)
        if per <= 0:
            raise ValueError(f"scaling.cpus_per_worker must be > 0, got {per:g}")
        if per * num_workers > cpus:
            raise ValueError(
                f"{num_workers} workers x {per:g} CPUs need {per * num_workers:g} CPUs, but the cluster has "
                f"{cpus:g}; lower scaling.cpus_per_worker or leave it unset (sized from the cluster)"
            )
        if per * num_workers > spare:
            log.warning(
                "%d workers x %g CPUs leave less than one CPU of %g for decoding; Ray may wait for CPUs "
                "forever. Leave scaling.cpus_per_worker unset to size it from the cluster.",
                num_workers,
                per,
                cpus,
            )
    resources = {"CPU": per}
    if use_gpu:
        resources["GPU"] = 1.0
    return resources


def train(
    config: TrainConfig | RunPlan, storage_options: Mapping[str, Any] | None = None, *, restart: bool = False
) -> str:
    """Train a GFNet on Ray (see the module doc); returns the URI of the final checkpoint.

    `config` may be a `RunPlan` from `prepare_run` (checks already done). Uses the connected
    Ray cluster, or starts a local one. A finished run is not trained again unless `restart`.
    """
    plan = config if isinstance(config, RunPlan) else prepare_run(config, storage_options, restart)
    config, options = plan.config, plan.storage_options
    restart = restart or plan.restart
    if plan.state == "finished" and not restart:
        log.info("run %s has already finished; its checkpoint is %s (restart to train again)", plan.name, plan.output)
        return plan.output
    if restart:
        _remove_run(plan.run_dir, options)
    elif plan.state == "started":
        log.info("resuming run %s from its last checkpoint in %s", plan.name, plan.run_dir)
    write_json(
        join_uri(plan.run_dir, RUN_RECORD),
        {"config": config_dict(config), "class_names": list(plan.class_names), "started_at": _now()},
        options,
    )
    init_ray()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = worker_resources(
        config.scaling.num_workers, config.scaling.use_gpu, config.scaling.cpus_per_worker, ray.cluster_resources()
    )
    ledger_name = f"gfpipe-drops-{uuid.uuid4().hex[:12]}"
    ledger = ray.remote(num_cpus=0)(DropLedger).options(name=ledger_name).remote()
    storage_path, storage_fs = _ray_storage(config.run.storage, options)
    loop_config = {
        "plan": plan,
        "ledger": ledger_name,
        "launch": uuid.uuid4().hex[:8],
        "log_level": logging.getLogger("gfpipe").getEffectiveLevel(),
        "threads": max(1, int(resources["CPU"])),
        "fault": _fault_spec(),
        "driver_pid": os.getpid(),
        "ray_version": ray.__version__,
    }
    log.info(
        "training %s: %d workers x %s, stages %s; run folder %s",
        plan.name,
        config.scaling.num_workers,
        ", ".join(f"{v:g} {k}" for k, v in resources.items()),
        ", ".join(f"{s} ({getattr(config, s).epochs} epochs)" for s in _STAGES if getattr(config, s).epochs) or "none",
        plan.run_dir,
    )
    try:
        with _quiet_data_progress():  # the trainer takes the driver's DataContext when it is built
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config=loop_config,
                scaling_config=ray.train.ScalingConfig(
                    num_workers=config.scaling.num_workers,
                    use_gpu=config.scaling.use_gpu,
                    resources_per_worker=resources,
                ),
                run_config=ray.train.RunConfig(
                    name=config.run.name,
                    storage_path=storage_path,
                    storage_filesystem=storage_fs,
                    failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.keep_checkpoints),
                    logging_config=ray.train.LoggingConfig(log_level="WARNING"),
                ),
                datasets={name: _dataset(split, config, options, ledger_name) for name, split in plan.splits.items()},
                dataset_config=_ingest_config(),
            )
            result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _user_error(exc) or exc from None
    finally:
        with contextlib.suppress(Exception):
            ray.kill(ledger)
    _publish(result.checkpoint, plan)
    return plan.output


def _publish(checkpoint: Any, plan: RunPlan) -> None:
    """Copy the final model out of the last Ray checkpoint to `run.output`; mark the run done."""
    if checkpoint is None:
        raise RuntimeError(f"run {plan.name} finished without a checkpoint in {plan.run_dir}")
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, MODEL_FILE)
        if not os.path.isfile(path):
            raise RuntimeError(
                f"run {plan.name}: the last checkpoint ({checkpoint.path}) holds no final model; "
                "training stopped before the calibration pass"
            )
        model = load_checkpoint(path)
    save_checkpoint(model, plan.output, storage_options=plan.storage_options)
    provenance = model.card.provenance
    write_json(
        join_uri(plan.run_dir, DONE_RECORD),
        {
            "output": plan.output,
            "finished_at": _now(),
            "stages": provenance.get("stages"),
            "dropped": provenance.get("dropped"),
        },
        plan.storage_options,
    )
    log.info("wrote %s", plan.output)


def _user_error(exc: Exception) -> Exception | None:
    """A worker's bad-data error (`TrainingDataError`) as a ValueError for the caller: Ray wraps
    worker errors, and its message carries each rank's traceback snippet (rank 0's first)."""
    marker = f"{TrainingDataError.__name__}: "
    for line in str(exc).splitlines():
        if marker in line:
            return ValueError(line.split(marker, 1)[1].strip())
    return None


def _remove_run(run_dir: str, options: Mapping[str, Any] | None) -> None:
    fs, path = filesystem(run_dir, options)
    if fs.exists(path):
        log.info("restart: removing %s", run_dir)
        fs.rm(path, recursive=True)
        fs.invalidate_cache()


def _ray_storage(storage: str, options: Mapping[str, Any] | None) -> tuple[str, Any]:
    """RunConfig's storage_path and storage_filesystem: a local folder, or the fsspec filesystem
    wrapped for pyarrow (Ray needs a pyarrow filesystem; RAY_NOTES.md)."""
    protocol, _ = split_protocol(storage)
    if protocol in (None, "file", "local"):
        return storage, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(storage, options)
    return path.rstrip("/"), PyFileSystem(FSSpecHandler(fs))


@contextlib.contextmanager
def _quiet_data_progress() -> Iterator[None]:
    """Ray Data's per-dataset progress off while training: the epoch lines are the progress."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.enable_progress_bars, ctx.print_on_execution_start
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = before


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Ray Data: shards -> decoded, labelled rows
# ---------------------------------------------------------------------------------------------


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


def _dataset(split: Split, config: TrainConfig, options: Mapping[str, Any] | None, ledger: str) -> Any:
    import ray.data

    items = [{"uri": s.uri, "format": s.format, "label": -1 if s.label is None else int(s.label)} for s in split.shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    if split.name == "train":
        ds = ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=config.seed, reseed_after_execution=True))
    ds = ds.map_batches(
        decode_shards,
        batch_size=1,
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


def _ingest_config() -> Any:
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
                splits = ds.streaming_split(world_size, equal=name == "train", locality_hints=hints)
                for rank, split in enumerate(splits):
                    output[rank][name] = split
            return output

    return _IngestConfig()


# ---------------------------------------------------------------------------------------------
# The worker loop
# ---------------------------------------------------------------------------------------------


class TrainingDataError(ValueError):
    """The data gave a worker nothing to train on (all images dropped, or fewer than a batch)."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: resume, the stages' epochs, per-epoch reports, calibration."""
    import ray.train
    import ray.train.torch

    from gfpipe.train.loops import Trainer

    plan: RunPlan = loop_config["plan"]
    config = plan.config
    _worker_logging(loop_config["log_level"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives use the current device
    else:
        torch.set_num_threads(loop_config["threads"])
    fault = loop_config.get("fault") or {}
    torch.manual_seed(config.seed)
    model = GFNet(config.model, ModelCard(plan.class_names, config.preprocessing))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:  # a fresh run starts from config.init; a resumed one from its checkpoint
        for note in initialise(model, config.init, plan.storage_options):
            if rank == 0:
                log.info("init: %s", note)
    trainer = Trainer(config, model, device, rank, world, wrap=_ddp_wrapper(config))
    state = _load_state(checkpoint, trainer)
    history: list[dict[str, Any]] = state.get("history", [])
    resumes = state.get("resumes", -1) + 1
    if state.get("final"):
        if rank == 0:
            log.info("run %s: already trained and calibrated; nothing to do", plan.name)
        return
    done = tuple(state["done"]) if state.get("done") else None
    if done and rank == 0:
        log.info("resuming after %s epoch %d", done[0], done[1] + 1)
    batch = max(1, config.batch_size // world)
    for stage, epochs in trainer.plan():
        todo = [e for e in range(epochs) if not _is_done((stage, e), done)]
        if not todo:
            continue
        trainer.begin_stage(stage)
        for epoch in todo:
            started = time.perf_counter()
            train_batches = _torch_batches(
                ray.train.get_dataset_shard("train"),
                batch,
                shuffle_seed=_seed(config.seed, stage, epoch, rank),
                drop_last=True,
            )
            watched = _watch(train_batches, stage, epoch, epochs, rank, config.log_every, fault)
            sums = trainer.train_epoch(stage, epoch, watched)
            seconds = time.perf_counter() - started
            val = trainer.evaluate(_torch_batches(ray.train.get_dataset_shard("val"), batch))
            metrics = _epoch_metrics(stage, epoch, epochs, sums, seconds, val, world, device, config.model.T)
            metrics.update(launch=loop_config["launch"], resumes=resumes)
            drops = _drops(loop_config["ledger"]) if rank == 0 else {}
            if metrics["train_images"] == 0:
                raise TrainingDataError(_no_data_message(plan, batch, world, drops))
            history.append(metrics)
            if rank == 0:
                _log_epoch(metrics, drops)
            _report(
                metrics,
                rank,
                {"trainer": trainer.state_dict(), "history": history, "done": [stage, epoch], "resumes": resumes},
            )
            if _fault_at(fault, "kill-driver", stage, epoch):
                _kill_driver(rank, loop_config["driver_pid"])
    _finish(plan, trainer, model, history, resumes, loop_config, rank, world, batch)


def _is_done(item: tuple[str, int], done: tuple[str, int] | None) -> bool:
    if done is None:
        return False
    order = {s: i for i, s in enumerate(_STAGES)}
    return (order[item[0]], item[1]) <= (order[done[0]], done[1])


def _seed(seed: int, stage: str, epoch: int, rank: int) -> int:
    return (((seed * 8 + _STAGES.index(stage)) * 100_003 + epoch) * 1_009 + rank) % (2**31)


def _ddp_wrapper(config: TrainConfig):
    """`prepare_model` for each stage's objective: DDP over the workers (no move: the Trainer
    placed it). Stochastic depth (drop_connect) skips blocks, so DDP must expect unused
    parameters then; so must a single-step model (no focus step uses the local encoder)."""
    import ray.train.torch

    resolved = config.model.resolved()
    unused = bool(resolved.drop_connect) or resolved.T == 1

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(
            module,
            move_to_device=False,
            parallel_strategy_kwargs={"find_unused_parameters": unused, "gradient_as_bucket_view": True},
        )

    return wrap


def _torch_batches(
    shard: Any, batch_size: int, *, shuffle_seed: int | None = None, drop_last: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    kwargs: dict[str, Any] = {}
    if shuffle_seed is not None:
        kwargs = {"local_shuffle_buffer_size": 4 * batch_size, "local_shuffle_seed": shuffle_seed}
    for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last, prefetch_batches=4, **kwargs):
        yield batch["image"], batch["label"]


def _watch(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    stage: str,
    epoch: int,
    epochs: int,
    rank: int,
    every: int,
    fault: Mapping[str, Any],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Progress lines every `every` batches (rank 0), and the test hook that kills a worker."""
    started = time.perf_counter()
    images = 0
    kill = _fault_at(fault, "kill-worker", stage, epoch) and int(fault.get("rank", -1)) == rank
    for i, (raw, labels) in enumerate(batches, 1):
        yield raw, labels
        images += int(labels.shape[0])
        if kill and i == 1 and _claim(fault.get("marker")):
            _committed()  # so the test knows which checkpoint the restart must find
            log.warning("test fault: rank %d exits during %s epoch %d", rank, stage, epoch)
            os._exit(1)
        if rank == 0 and every and i % every == 0:
            rate = images / max(time.perf_counter() - started, 1e-9)
            log.info("%s epoch %d/%d: %d batches, %.1f images/s on rank 0", stage, epoch + 1, epochs, i, rate)


def _claim(marker: str | None) -> bool:
    """True once per marker file (created atomically here)."""
    if not marker:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _committed() -> None:
    """Wait until Ray Train has committed every checkpoint reported so far (test hooks only)."""
    import ray.train

    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _kill_driver(rank: int, pid: int) -> None:
    """Test hook: rank 0 waits until the last checkpoint is committed, then kills the driver."""
    if rank != 0:
        time.sleep(60)  # the driver's death takes this worker down
        return
    _committed()
    log.warning("test fault: killing the driver (pid %d)", pid)
    os.kill(pid, signal.SIGKILL)
    time.sleep(60)


def _epoch_metrics(
    stage: str,
    epoch: int,
    epochs: int,
    sums: Mapping[str, float],
    seconds: float,
    val: Mapping[str, Any],
    world: int,
    device: torch.device,
    T: int,
) -> dict[str, Any]:
    train_correct = [float(sums.get(f"correct_t{t}", 0.0)) for t in range(1, T + 1)]
    values = [float(sums.get("loss_sum", 0.0)), float(sums.get("images", 0.0)), *train_correct]
    values += [float(val["images"]), *map(float, val["correct"])]
    total = _all_reduce(values, device, world)
    longest = _all_reduce([seconds], device, world, op="max")[0]
    loss_sum, images = total[0], total[1]
    correct = total[2 : 2 + T]
    val_images, val_correct = total[2 + T], total[3 + T :]
    return {
        "stage": stage,
        "epoch": epoch,
        "epochs": epochs,
        "loss": loss_sum / images if images else float("nan"),
        "train_images": int(images),
        "train_accuracy": [c / images if images else 0.0 for c in correct],
        "images_per_s": images / longest if longest > 0 else 0.0,
        "seconds": longest,
        "val_images": int(val_images),
        "val_accuracy": [c / val_images if val_images else 0.0 for c in val_correct],
    }


def _all_reduce(values: list[float], device: torch.device, world: int, op: str = "sum") -> list[float]:
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _log_epoch(metrics: Mapping[str, Any], drops: Mapping[str, Any]) -> None:
    acc = " ".join(f"{100 * a:.1f}" for a in metrics["val_accuracy"])
    dropped = sum(v["images"] for v in drops.values())
    log.info(
        "%s epoch %d/%d: loss %.4f, %d images, %.1f images/s; val accuracy per step %% [%s] on %d images%s",
        metrics["stage"],
        metrics["epoch"] + 1,
        metrics["epochs"],
        metrics["loss"],
        metrics["train_images"],
        metrics["images_per_s"],
        acc,
        metrics["val_images"],
        f"; {dropped} unusable images dropped so far ({_drop_text(drops)})" if dropped else "",
    )


def _drop_text(drops: Mapping[str, Any]) -> str:
    return "; ".join(
        f"{split}: {v['images']} ({', '.join(f'{k} {n}' for k, n in v['reasons'].items())}; e.g. {v['examples'][0]})"
        for split, v in drops.items()
        if v["examples"]
    )


def _drops(ledger: str) -> dict[str, Any]:
    try:
        import ray

        return ray.get(ray.get_actor(ledger).summary.remote(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - only for logging
        log.debug("drop ledger %s unavailable: %s", ledger, exc)
        return {}


def _no_data_message(plan: RunPlan, batch: int, world: int, drops: Mapping[str, Any]) -> str:
    dropped = drops.get("train", {})
    why = f"; {dropped['images']} images were dropped ({_drop_text({'train': dropped})})" if dropped else ""
    return (
        f"no training batch: {plan.splits['train'].uri} gave each of the {world} workers fewer than one "
        f"batch of {batch} usable images{why}; check the data, or lower batch_size"
    )


def _report(metrics: dict[str, Any], rank: int, state: dict[str, Any] | None, model: GFNet | None = None) -> None:
    """One `ray.train.report` on every rank; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="gfpipe-ckpt-") as folder:
        if state is not None:
            torch.save(state, os.path.join(folder, STATE_FILE))
        if model is not None:
            save_checkpoint(model, os.path.join(folder, MODEL_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _load_state(checkpoint: Any, trainer: Any) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    trainer.load_state_dict(state["trainer"])
    return state


def _finish(
    plan: RunPlan,
    trainer: Any,
    network: GFNet,
    history: list[dict[str, Any]],
    resumes: int,
    loop_config: Mapping[str, Any],
    rank: int,
    world: int,
    batch: int,
) -> None:
    """Calibration on held-out data, gathered to rank 0, which reports the final model.

    `network` is the GFNet the trainer was built with (it trains that module in place)."""
    import ray.train

    config = plan.config
    scores, predictions, labels = trainer.calibrate(_torch_batches(ray.train.get_dataset_shard("calibration"), batch))
    parts = _gather((scores, predictions, labels), world)
    split = plan.splits["calibration"]
    source = split.uri if config.data.calibration else f"{split.uri} (validation data)"
    model = None
    metrics: dict[str, Any] = {"stage": "calibration", "launch": loop_config["launch"], "resumes": resumes}
    if rank == 0:
        scores = np.concatenate([p[0] for p in parts])
        predictions = np.concatenate([p[1] for p in parts])
        labels = np.concatenate([p[2] for p in parts])
        if not len(scores):
            raise TrainingDataError(f"the calibration data {split.uri} gave no usable images")
        stages = {m["stage"]: m for m in history}
        drops = _drops(loop_config["ledger"])
        model = network
        model.card = ModelCard(
            class_names=plan.class_names,
            preprocessing=config.preprocessing,
            calibration={
                "scores": torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)),
                "predictions": torch.from_numpy(np.ascontiguousarray(predictions, dtype=np.int64)),
                "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
                "source": f"{source}, {len(scores)} images",
            },
            provenance={
                "train_config": config_dict(config),
                "ray_version": loop_config["ray_version"],
                "run": plan.name,
                "stages": stages,
                "history": history,
                "dropped": drops,
            },
        )
        calibration_accuracy = (predictions == labels[:, None]).mean(0).tolist()
        metrics.update(calibration_images=len(scores), calibration_accuracy=calibration_accuracy)
        log.info(
            "calibration on %s: %d images, accuracy per step %% [%s]",
            source,
            len(scores),
            " ".join(f"{100 * a:.1f}" for a in calibration_accuracy),
        )
    state = {"trainer": trainer.state_dict(), "history": history, "done": None, "resumes": resumes, "final": True}
    _report(metrics, rank, state if rank == 0 else None, model)


def _worker_logging(level: int) -> None:
    """Worker processes have no logging setup of their own: gfpipe's lines go to stderr, which
    Ray forwards to the driver."""
    logger = logging.getLogger("gfpipe")
    logger.setLevel(level)
    if not any(getattr(h, "_gfpipe_worker", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._gfpipe_worker = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def _fault_at(fault: Mapping[str, Any], kind: str, stage: str, epoch: int) -> bool:
    return fault.get("kind") == kind and fault.get("stage") == stage and int(fault.get("epoch", -1)) == epoch


def _fault_spec() -> dict[str, Any]:
    """The test hook from GFPIPE_TRAIN_FAULT: 'kind:key=value:...' (see the module doc)."""
    text = os.environ.get(FAULT_ENV, "").strip()
    if not text:
        return {}
    kind, *pairs = text.split(":")
    spec: dict[str, Any] = {"kind": kind}
    for pair in pairs:
        key, _, value = pair.partition("=")
        spec[key] = value
    return spec
