"""Training on a Ray cluster: the driver, from a checked plan to the final checkpoint.

`train(config)` runs a whole training:
1. `prepare_run` (gfpipe.train.plan) checks everything a user can get wrong before any Ray work.
2. Ray Data reads and decodes the shards (gfpipe.train.ingest); unusable images are dropped and
   counted in a `DropLedger` actor that the driver starts for the run.
3. A `TorchTrainer` (Ray Train V2) runs `train_loop_per_worker` (gfpipe.train.worker) on N
   workers (gloo on CPU, NCCL on GPU), sized so workers plus the decode stage fit the cluster
   (RAY_NOTES.md: an over-asked 2-CPU cluster hangs). The train split is equal per worker (DDP
   needs equal batch counts); validation and calibration are split without dropping rows.
4. Per worker: the stages' epochs, a `ray.train.report` per epoch (rank 0 with the checkpoint),
   then calibration on held-out data; rank 0 writes the final gfpipe checkpoint into the last
   Ray checkpoint.
5. The driver copies it to `run.output` with `save_checkpoint` (so the output may be local to the
   driver or on object storage) and marks the run finished.

Resume: re-running with the same `run.name` and `run.storage` continues from the last
checkpoint (Ray finds the run's snapshot; `ray.train.get_checkpoint()` returns it), skipping the
epochs already done; a worker failure restarts the worker group from the last checkpoint
(`run.max_failures`). A finished run is not trained again (`restart=True` starts over).
Failures on purpose, for tests: gfpipe.train.faults.

This module also re-exports the public names of the training modules that callers import from
here (`prepare_run`, `RunPlan`, the record names, `DropLedger`, `decode_shards`, ...).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from fsspec.core import split_protocol

from gfpipe.checkpoint import load_checkpoint, save_checkpoint
from gfpipe.data.io import filesystem, join_uri, write_json
from gfpipe.train.config import TrainConfig, config_dict
from gfpipe.train.faults import FAULT_ENV, fault_spec
from gfpipe.train.ingest import TRAIN_DATASETS, DropLedger, dataset, decode_shards, ingest_config
from gfpipe.train.plan import DONE_RECORD, MODEL_FILE, RUN_RECORD, RunPlan, Split, prepare_run
from gfpipe.train.worker import STAGES, STATE_FILE, TrainingDataError, train_loop_per_worker

__all__ = [
    "DONE_RECORD",
    "FAULT_ENV",
    "MODEL_FILE",
    "RUN_RECORD",
    "STATE_FILE",
    "DropLedger",
    "RunPlan",
    "Split",
    "TrainingDataError",
    "decode_shards",
    "init_ray",
    "prepare_run",
    "train",
    "train_loop_per_worker",
    "worker_resources",
]

log = logging.getLogger(__name__)


def init_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` or RAY_ADDRESS, or to a live cluster that `ray start`
    left on this machine; else start a local Ray on all CPUs. Ray's own INFO chatter stays off
    the console.

    `ray.init()` alone would also try a cluster that `ray start` recorded and that has since died
    (its /tmp/ray/ray_current_cluster file outlives it) and fail; a dead one is ignored here.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None and _live_local_cluster():
        address = "auto"
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)


def _live_local_cluster() -> bool:
    """Whether the cluster `ray start` recorded on this machine answers on its GCS port."""
    import socket

    record = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "ray_current_cluster")
    try:
        with open(record) as fh:
            host, _, port = fh.read().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


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
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    decode_tasks = max(1, math.floor(cpus - resources["CPU"] * config.scaling.num_workers))
    ledger_name = f"gfpipe-drops-{uuid.uuid4().hex[:12]}"
    ledger = ray.remote(num_cpus=0)(DropLedger).options(name=ledger_name).remote()
    storage_path, storage_fs = _ray_storage(config.run.storage, options)
    loop_config = {
        "plan": plan,
        "ledger": ledger_name,
        "launch": uuid.uuid4().hex[:8],
        "log_level": logging.getLogger("gfpipe").getEffectiveLevel(),
        "threads": max(1, int(resources["CPU"])),
        "fault": fault_spec(),
        "driver_pid": os.getpid(),
        "ray_version": ray.__version__,
    }
    log.info(
        "training %s: %d workers x %s, stages %s; run folder %s",
        plan.name,
        config.scaling.num_workers,
        ", ".join(f"{v:g} {k}" for k, v in resources.items()),
        ", ".join(f"{s} ({getattr(config, s).epochs} epochs)" for s in STAGES if getattr(config, s).epochs) or "none",
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
                datasets=_datasets(plan, config, options, ledger_name, decode_tasks),
                dataset_config=ingest_config(),
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


def _total_epochs(config: TrainConfig) -> int:
    return sum(getattr(config, stage).epochs for stage in STAGES)


def _datasets(plan: RunPlan, config: TrainConfig, options: Any, ledger: str, decode_tasks: int) -> dict[str, Any]:
    """Ray Datasets by name: one per split, and the training split a second time (another shard
    order) when the run trains more than one epoch, for the epochs that alternate with the first
    (gfpipe.train.ingest)."""
    datasets = {name: dataset(split, config, options, ledger, decode_tasks) for name, split in plan.splits.items()}
    if _total_epochs(config) > 1:
        train = plan.splits["train"]
        datasets[TRAIN_DATASETS[1]] = dataset(train, config, options, ledger, decode_tasks, seed_offset=1)
    return datasets


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
