"""One Ray Train worker's loop: resume, the stages' epochs, per-epoch reports, calibration.

A `TorchTrainer` runs `train_loop_per_worker` on every worker (gloo on CPU, NCCL on GPU). Per
worker, a `Trainer` (gfpipe.train.loops) runs each stage's epochs on the worker's shard of the
Ray datasets; per epoch the sums are all-reduced, rank 0 logs a line, and every rank calls
`ray.train.report` once, rank 0 with the checkpoint (trainer state + per-epoch history).
After the last stage: exit scores of every step on held-out data (`data.calibration`, else
val), gathered to rank 0, which writes the final gfpipe checkpoint (ModelCard with class names,
preprocessing, calibration, provenance) into the last Ray checkpoint.

Resume: `ray.train.get_checkpoint()` returns the run's last checkpoint (after a worker failure,
or when the same run is started again), and the epochs already done are skipped; after a final
(calibrated) checkpoint there is nothing left to do.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gfpipe.checkpoint import save_checkpoint
from gfpipe.model.gfnet import GFNet, ModelCard
from gfpipe.train.config import TrainConfig, config_dict
from gfpipe.train.faults import claim, committed, fault_at, kill_driver
from gfpipe.train.ingest import train_dataset_name
from gfpipe.train.init import initialise
from gfpipe.train.plan import MODEL_FILE, RunPlan

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STAGES = ("stage0", "stage1", "stage2", "stage3")  # Trainer.STAGES, without importing the loops here


class TrainingDataError(ValueError):
    """The data gave a worker nothing to train on (all images dropped, or fewer than a batch)."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: resume, the stages' epochs, per-epoch reports, calibration."""
    import ray.train
    import ray.train.torch

    from gfpipe.runtime import tune_allocator
    from gfpipe.train.loops import Trainer

    tune_allocator()  # a worker is a process of its own (gfpipe.runtime)
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
    nodes = _gather(_node_label(), world)  # where each rank runs, recorded with every epoch
    done = tuple(state["done"]) if state.get("done") else None
    if done and rank == 0:
        log.info("resuming after %s epoch %d", done[0], done[1] + 1)
    batch = max(1, config.batch_size // world)
    epochs_of = dict(trainer.plan())
    schedule = [(stage, e) for stage, epochs in trainer.plan() for e in range(epochs) if not _is_done((stage, e), done)]

    # Epochs alternate between two copies of the training split (gfpipe.train.ingest), so epoch
    # i+1's input is read ahead from one copy while epoch i trains from the other: Ray Data runs
    # a dataset again for every epoch, and that start cost 0.6 s of a 5 s epoch here.
    # (A run of one epoch in all has one copy, gfpipe.train.run._datasets: then there is no i+1.)
    def read_ahead(index: int) -> EpochPrefetch:
        stage, epoch = schedule[index]
        shard = ray.train.get_dataset_shard(train_dataset_name(index))
        seed = _seed(config.seed, stage, epoch, rank)
        return EpochPrefetch(_torch_batches(shard, batch, shuffle_seed=seed, drop_last=True))

    upcoming = read_ahead(0) if schedule else None
    for index, (stage, epoch) in enumerate(schedule):
        epochs = epochs_of[stage]
        if index == 0 or schedule[index - 1][0] != stage:
            trainer.begin_stage(stage)
        started = time.perf_counter()
        batches = upcoming
        if index + 1 < len(schedule):
            upcoming = read_ahead(index + 1)  # from the other copy: this epoch's is still being read
        timing: dict[str, float] = {}
        watched = _watch(batches, stage, epoch, epochs, rank, config.log_every, fault, timing)
        sums = trainer.train_epoch(stage, epoch, watched)
        seconds = time.perf_counter() - started
        val = trainer.evaluate(_torch_batches(ray.train.get_dataset_shard("val"), batch))
        first_batch = timing.get("first_batch", seconds)
        metrics = _epoch_metrics(stage, epoch, epochs, sums, seconds, first_batch, val, world, device, config.model.T)
        metrics.update(launch=loop_config["launch"], resumes=resumes, nodes=nodes)
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
        if fault_at(fault, "kill-driver", stage, epoch):
            kill_driver(rank, loop_config["driver_pid"])
    _finish(plan, trainer, model, history, resumes, loop_config, rank, world, batch)


class EpochPrefetch:
    """An epoch's training batches, read by a background thread from the moment it is made.

    Made as soon as the previous epoch's last batch is trained, so the epoch's input pipeline
    starts (Ray Data executes the dataset again for each epoch, behind a barrier of every worker)
    while the previous epoch validates and reports, instead of at the start of this epoch. The
    thread keeps at most `depth` batches ahead of the trainer; an error in it is raised where
    the trainer takes the next batch. `batches` is made in the caller's thread (Ray Train's
    context, e.g. `get_dataset_shard`, belongs to it); only its iteration moves.
    """

    _END = object()

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._read, args=(batches,), name="gfpipe-epoch-prefetch", daemon=True)
        self._thread.start()

    def _read(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        try:
            for item in batches:
                self._queue.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put(_Failed(exc))
        else:
            self._queue.put(self._END)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _node_label() -> str:
    """IP/node id (8 characters), as the classify job's `node` column: loopback nodes share an IP."""
    import ray

    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _is_done(item: tuple[str, int], done: tuple[str, int] | None) -> bool:
    if done is None:
        return False
    order = {s: i for i, s in enumerate(STAGES)}
    return (order[item[0]], item[1]) <= (order[done[0]], done[1])


def _seed(seed: int, stage: str, epoch: int, rank: int) -> int:
    return (((seed * 8 + STAGES.index(stage)) * 100_003 + epoch) * 1_009 + rank) % (2**31)


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
    # Made here, not on first use: the call resolves the device from Ray Train's context, which
    # an EpochPrefetch thread (where the batches may be iterated) does not have.
    batches = shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last, prefetch_batches=4, **kwargs)
    return ((batch["image"], batch["label"]) for batch in batches)


def _watch(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    stage: str,
    epoch: int,
    epochs: int,
    rank: int,
    every: int,
    fault: Mapping[str, Any],
    timing: dict[str, float],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Progress lines every `every` batches (rank 0), the test hook that kills a worker, and the
    seconds until the first batch arrived (`timing["first_batch"]`: the input pipeline's start,
    paid again every epoch, which the epoch's images/s includes)."""
    started = time.perf_counter()
    images = 0
    kill = fault_at(fault, "kill-worker", stage, epoch) and int(fault.get("rank", -1)) == rank
    for i, (raw, labels) in enumerate(batches, 1):
        if i == 1:
            timing["first_batch"] = time.perf_counter() - started
        yield raw, labels
        images += int(labels.shape[0])
        if kill and i == 1 and claim(fault.get("marker")):
            committed()  # so the test knows which checkpoint the restart must find
            log.warning("test fault: rank %d exits during %s epoch %d", rank, stage, epoch)
            os._exit(1)
        if rank == 0 and every and i % every == 0:
            rate = images / max(time.perf_counter() - started, 1e-9)
            log.info("%s epoch %d/%d: %d batches, %.1f images/s on rank 0", stage, epoch + 1, epochs, i, rate)


def _epoch_metrics(
    stage: str,
    epoch: int,
    epochs: int,
    sums: Mapping[str, float],
    seconds: float,
    first_batch: float,
    val: Mapping[str, Any],
    world: int,
    device: torch.device,
    T: int,
) -> dict[str, Any]:
    """The epoch's record over all workers; times are the slowest worker's (`first_batch`: seconds
    until its first training batch arrived)."""
    train_correct = [float(sums.get(f"correct_t{t}", 0.0)) for t in range(1, T + 1)]
    values = [float(sums.get("loss_sum", 0.0)), float(sums.get("images", 0.0)), *train_correct]
    values += [float(val["images"]), *map(float, val["correct"])]
    total = _all_reduce(values, device, world)
    longest, first_batch = _all_reduce([seconds, first_batch], device, world, op="max")
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
        "first_batch_seconds": first_batch,
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
