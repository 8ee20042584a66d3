"""The classify job's driver: shards in, one Parquet row per image out, under a compute budget.

```
driver: list shards; skip done ones (their spend counts), clean up unfinished ones; count images
        resolve the budget into a per-image target; thresholds from calibration; start the ledger
Ray Data: from_items(shards) -> read + decode (CPU tasks, gfpipe.classify.reading)
          -> ClassifyReplica actor pool (engine with real early exit; writes the parts)
driver: each part summary -> ShardTracker -> a shard's done marker once its parts tile it
        -> summary.json + report.html
```
Why this shape (no end-of-stream hook, no per-shard file names in `write_parquet`, Ray Data's
checkpointing unusable here, retries reporting twice): RAY_NOTES.md, "Classify-job building
blocks". Every input image yields exactly one row: bad images are error rows, a retried actor
call overwrites its own parts and replaces its own spend in the ledger, and a re-run skips done
shards and redoes unfinished ones from scratch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from gfpipe.budget.costs import step_costs
from gfpipe.budget.grammar import Budget, format_amount, format_duration
from gfpipe.checkpoint import load_checkpoint
from gfpipe.classify.config import ClassifyConfig
from gfpipe.classify.layout import OutputLayout
from gfpipe.classify.ledger import BudgetLedger
from gfpipe.classify.replica import CONFIDENCE_BINS, FAULT_ENV, ClassifyReplica
from gfpipe.classify.state import ShardPlan, ShardTracker, clear_leftovers, plan_shards
from gfpipe.classify.summary import build_summary, report_samples
from gfpipe.data.io import ensure_writable, write_json
from gfpipe.data.shards import count_images, discover_shards

log = logging.getLogger(__name__)

READ_TASK_MEMORY = 512 * 2**20  # bytes per read task: a worker process (about 260 MiB measured) plus its blocks


@dataclasses.dataclass(frozen=True)
class PoolShape:
    """How the model actors and the read tasks share the cluster."""

    replicas: int
    device: str  # "cuda" or "cpu"
    cpus_per_replica: float
    gpus_per_replica: float
    threads: int
    read_tasks: int  # read tasks at a time; they reserve no CPU (see pool_shape)


def pool_shape(config: ClassifyConfig, cluster: Mapping[str, float], node_cpus: Sequence[float] = ()) -> PoolShape:
    """How many model replicas, with what, and what each read task gets.

    GPUs: `replicas_per_gpu` replicas per GPU (each a 1/n share of one). CPUs: about half of the
    cluster's CPUs for the model, in replicas of at most 2 CPUs and at most half the smallest node
    (`node_cpus`), so a replica can be placed again on the nodes left after one is lost instead
    of waiting forever for one as large.
    Read tasks reserve no CPU and run at most `read_tasks` at a time (the CPUs the replicas leave,
    at least one): actors hold their CPUs for the whole job, and a read task that needed a CPU
    reservation could wait forever behind them (RAY_NOTES.md: an over-asked 2-CPU cluster
    deadlocks; after a lost node, the restarted replicas may fill the nodes left).
    """
    cpus = float(cluster.get("CPU", 0.0))
    gpus = int(cluster.get("GPU", 0.0))
    if cpus <= 0:
        raise ValueError("the Ray cluster reports no CPUs; the read stage needs at least one")
    smallest = min((c for c in node_cpus if c > 0), default=cpus)
    device = config.device if config.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda":
        if gpus < 1:
            raise ValueError("--device cuda, but the Ray cluster has no GPUs; use --device cpu or auto")
        share = config.replicas_per_gpu
        replicas = config.replicas or gpus * share
        if replicas > gpus * share:
            raise ValueError(
                f"{replicas} GPU replicas at {share} per GPU need {math.ceil(replicas / share)} GPUs, "
                f"the cluster has {gpus}; lower --replicas or raise --replicas-per-gpu"
            )
        per = config.cpus_per_replica or min(1.0, max(cpus - 1.0, 0.5) / replicas)
        return PoolShape(replicas, "cuda", per, 1.0 / share, 1, max(1, math.floor(cpus - per * replicas)))
    model_cpus = max(min(cpus - 1.0, cpus / 2), cpus / 2 if cpus < 2 else 1.0)
    per = config.cpus_per_replica or math.floor(min(2.0, max(smallest / 2, 0.25), model_cpus) * 100) / 100
    replicas = config.replicas or max(1, math.floor(model_cpus / per + 1e-9))
    if per * replicas > cpus - 0.25:
        raise ValueError(
            f"{replicas} replicas x {per:g} CPUs leave no CPU for reading on a cluster of {cpus:g} CPUs; "
            "lower --replicas or --cpus-per-replica, or leave them unset (sized from the cluster)"
        )
    return PoolShape(replicas, "cpu", per, 0.0, max(1, round(per)), max(1, math.floor(cpus - per * replicas)))


def _node_cpus() -> list[float]:
    import ray

    return [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def _init_ray(address: str | None) -> None:
    from gfpipe.train.run import init_ray

    init_ray(address)


def _ledger_name(run_id: str) -> str:
    return f"gfpipe-ledger-{run_id}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def classify(config: ClassifyConfig) -> dict[str, Any]:
    """Run the whole job (see the module doc); returns the summary also written to summary.json."""
    started = time.time()
    options = config.storage_options
    _check_output_outside_input(config.input, config.output, options)
    ensure_writable(config.output, options)
    model = load_checkpoint(config.checkpoint, storage_options=options, **config.checkpoint_overrides)
    shards = discover_shards(config.input, options, config.read_options)
    layout = OutputLayout(config.output, options)
    plan = plan_shards(shards, layout, fresh=config.overwrite)
    run_id = f"{_now()}-{uuid.uuid4().hex[:6]}"
    macs = np.asarray(step_costs(model), np.float64)
    tracker = ShardTracker(layout, plan, run_id, model.config.T)
    # A budget in MACs is checked before Ray starts (and before anything is removed); a time
    # budget needs a measurement on Ray.
    target = _resolve_target(config, plan, macs, None) if plan.todo and config.budget.kind != "time" else None
    log.info(
        "%d shards: %d to classify (%d changed since done), %d already done",
        len(shards),
        len(plan.todo),
        len(plan.changed),
        len(plan.done),
    )
    if plan.todo:
        run = _classify_shards(config, model, plan, macs, tracker, run_id, target)
    else:
        log.info("nothing to classify: every shard of %s is done (--overwrite starts over)", config.input)
        run = {"status": {}, "target": _nominal_target(config, plan, macs), "nodes": {}, "pool": None}
    markers = {**plan.done, **tracker.done}
    summary = build_summary(
        config=config,
        run_id=run_id,
        model=model,
        markers=markers,
        run_shards={
            "total": len(shards),
            "classified": len(plan.todo),
            "skipped_done": len(plan.done),
            "redone_changed": len(plan.changed),
            "redone_changed_uris": [s.uri for s, sid, _ in plan.todo if sid in plan.changed],
            "split_for_reading": run.get("split", {}),
        },
        status=run["status"],
        target=run["target"],
        elapsed=time.time() - started,
        nodes_run=run["nodes"],
        ray_version=_ray_version(),
        bins=CONFIDENCE_BINS,
    )
    summary["pool"] = run["pool"]
    summary["engine"] = run.get("engine")
    write_json(layout.summary_uri, summary, options)
    _write_report(layout, summary, markers, model, config)
    return summary


def _check_output_outside_input(input_uri: str, output: str, options: Mapping[str, Any] | None) -> None:
    """An output inside the input would be read back as input by the next run (Parquet parts are
    shards too): refuse it before anything is written."""
    from gfpipe.data.io import filesystem

    in_fs, in_path = filesystem(input_uri, options)
    out_fs, out_path = filesystem(output, options)
    base = in_path.rstrip("/").split("*", 1)[0].split("{", 1)[0].rstrip("/")
    if type(in_fs) is type(out_fs) and base and (out_path.rstrip("/") + "/").startswith(base + "/"):
        raise ValueError(
            f"--output {output} lies inside --input {input_uri}: the next run would read its Parquet "
            "parts as images; choose an output folder outside the input"
        )


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def _classify_shards(
    config: ClassifyConfig,
    model: Any,
    plan: ShardPlan,
    macs: np.ndarray,
    tracker: ShardTracker,
    run_id: str,
    target: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Ray part: size the pool, resolve the budget, start the ledger, run the dataset and turn
    its part summaries into done markers. Raises if a shard did not finish."""
    import ray

    _init_ray(config.address)
    shape = pool_shape(config, ray.cluster_resources(), _node_cpus())
    target = target or _resolve_target(config, plan, macs, shape)
    ledger = _start_ledger(config, model, plan, macs, shape, target, run_id)
    if config.overwrite:
        log.info("--overwrite: removed the earlier output (%d shard folders)", tracker.layout.remove_all())
    clear_leftovers(plan, tracker.layout)
    fault = os.environ.get(FAULT_ENV, "")
    nodes: dict[str, int] = {}
    engine = dict.fromkeys(("image_steps", "full_image_steps", "model_calls", "partial_calls", "model_seconds"), 0.0)
    monitor = _Monitor(
        ledger,
        target.get("todo_images"),
        target["macs_per_image"],
        config.progress_seconds,
        config.stall_seconds,
        shape,
    )
    try:
        items = plan.read_items(shape.read_tasks)
        split = {item["uri"]: item["pieces"] for item in items if item["pieces"] > 1}
        if split:
            log.info("%d large shards split for reading into %d pieces", len(split), sum(split.values()))
        for batch in _dataset(config, items, shape, run_id, fault, model.card.preprocessing, macs).iter_batches(
            batch_size=None, batch_format="numpy"
        ):
            for i in range(len(batch["sid"])):
                row = {name: column[i] for name, column in batch.items()}
                nodes[str(row["node"])] = nodes.get(str(row["node"]), 0) + int(row["last"] - row["first"] + 1)
                for name in engine:
                    engine[name] += float(row[name])
                if tracker.add(row):
                    _maybe_kill_driver(fault, len(tracker.done))
        tracker.finish()
        status = ray.get(ledger.status.remote())
    except BaseException:
        # The stall interrupt can surface as KeyboardInterrupt or as whatever Ray Data raises
        # when interrupted mid-wait; either way the stall is the reason.
        if monitor.stalled:
            raise RuntimeError(monitor.stalled) from None
        raise
    finally:
        monitor.stop()
        ray.kill(ledger)
    unfinished = tracker.unfinished()
    if unfinished:
        raise RuntimeError(
            f"{len(unfinished)} shards did not finish: {', '.join(unfinished[:5])}; "
            "re-run the same command to classify them (done shards are kept)"
        )
    engine["full_batch_share"] = engine["full_image_steps"] / engine["image_steps"] if engine["image_steps"] else None
    engine["note"] = "image-steps of this run's model calls (a retried call counts each try)"
    pool = {
        **dataclasses.asdict(shape),
        "batch_size": _batch_size(config, shape),
        "batches_per_call": _batches_per_call(config, shape),
    }
    return {"status": status, "target": target, "nodes": nodes, "pool": pool, "engine": engine, "split": split}


def _batches_per_call(config: ClassifyConfig, shape: PoolShape) -> int:
    return config.batches_per_call or (32 if shape.device == "cuda" else 4)


def _batch_size(config: ClassifyConfig, shape: PoolShape) -> int:
    return config.batch_size or (256 if shape.device == "cuda" else 64)


def _maybe_kill_driver(fault: str, shards_done: int) -> None:
    """Test hook (GFPIPE_CLASSIFY_FAULT='kill-driver:after=N'): die hard once N shards are done."""
    if not fault.startswith("kill-driver"):
        return
    fields = dict(p.partition("=")[::2] for p in fault.split(":")[1:])
    if shards_done >= int(fields.get("after", 1)):
        log.warning("test fault: killing the driver after %d done shards", shards_done)
        os.kill(os.getpid(), signal.SIGKILL)


def _write_report(layout: OutputLayout, summary: dict, markers: dict, model: Any, config: ClassifyConfig) -> None:
    """report.html; a failure here is logged, never a failed job: the rows and summary are written."""
    from gfpipe.report import write_report

    try:
        samples = report_samples(layout, markers, config.report_samples, model, config.read_options)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: could not re-read sample images (%s); the report has no glimpse figure", exc)
        samples = []
    try:
        write_report(layout.root, summary, samples, layout.options)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: could not write %s (%s); the rows and summary.json are complete", layout.report_uri, exc)


# ---------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------


def _nominal_target(config: ClassifyConfig, plan: ShardPlan, macs: np.ndarray) -> dict[str, Any]:
    """The budget per image when this run classifies nothing (for the summary of a re-run)."""
    budget = config.budget
    images = sum(int(m["records"]) for m in plan.done.values())
    per_image = budget.value if budget.kind == "mean" else (budget.value / images if budget.kind == "total" else None)
    return {"macs_per_image": per_image or 0.0, "step_macs": macs.tolist(), "unit": "MACs", "message": "nothing to do"}


def _count_todo(config: ClassifyConfig, plan: ShardPlan) -> int | None:
    """Images in the shards to classify, from metadata (None if any shard cannot be counted cheaply)."""
    total = 0
    for shard, _, _ in plan.todo:
        n = count_images(shard, config.storage_options, config.read_options)
        if n is None:
            return None
        total += n
    return total


def _resolve_target(
    config: ClassifyConfig, plan: ShardPlan, macs: np.ndarray, shape: PoolShape | None
) -> dict[str, Any]:
    """The controller's target per image for the images of this run, in MACs or seconds.

    Done shards' spend counts: a mean or total budget covers the whole input, so this run's
    images get what is left of it. A time budget covers this run's wall clock.
    """
    budget = config.budget
    todo = _count_todo(config, plan)
    done_images = sum(int(sum(m["exits"])) for m in plan.done.values())  # classified, error rows not
    done_records = sum(int(m["records"]) for m in plan.done.values())
    done_macs = sum(float(m["macs"]) for m in plan.done.values())
    calibration_macs = config.calibrate * float(macs[-1])
    out: dict[str, Any] = {"todo_images": todo, "step_macs": macs.tolist(), "unit": "MACs"}
    if budget.kind in ("total", "time") and not todo and plan.todo:
        raise ValueError(
            f"{budget} needs the number of images, but some shards cannot be counted cheaply (compressed "
            "tars, remote tars without gfpipe's _manifest.json); give a mean budget per image with --budget"
        )
    if budget.kind == "time":
        assert shape is not None, "a time budget is resolved once the pool is known"
        seconds = _measure_step_seconds(config, shape)
        resolved = budget.resolve(step_seconds=seconds, num_images=max(todo or 1, 1), num_workers=shape.replicas)
        out.update(
            costs=list(resolved.costs),
            target=resolved.target,
            unit="s",
            macs_per_image=float(np.interp(resolved.target, resolved.costs, macs)),
            message=resolved.message,
            clamped=resolved.clamped,
        )
        return out
    # The user's own form first, so that an impossible budget is refused in the user's terms.
    user = budget.resolve(macs, num_images=done_records + todo if budget.kind == "total" else None)
    per_image = user.requested
    out["macs_per_image"] = per_image
    if not (todo and (plan.done or calibration_macs)):
        out.update(costs=macs.tolist(), target=user.target, message=user.message, clamped=user.clamped)
        return out
    remaining = (per_image * (done_images + todo) - done_macs - calibration_macs) / todo
    context = (
        f"{budget} with {done_images} images already done at {format_amount(done_macs)}"
        f"{' and the calibration pass' if calibration_macs else ''}: "
    )
    try:
        resolved = Budget("mean", max(remaining, 1e-9)).resolve(macs)
    except ValueError as exc:
        raise ValueError(context + str(exc)) from None
    out.update(
        costs=macs.tolist(), target=resolved.target, message=context + resolved.message, clamped=resolved.clamped
    )
    return out


def _measure_step_seconds(config: ClassifyConfig, shape: PoolShape) -> list[float]:
    """Per-step seconds per image, measured by one replica-sized task at the job's batch size."""
    import ray

    def measure(checkpoint, overrides, options, batch, device, threads, bf16):
        import torch

        from gfpipe.budget.costs import measure_step_seconds

        torch.set_num_threads(max(1, threads))
        model = load_checkpoint(checkpoint, storage_options=options, **overrides)
        dev = torch.device("cuda:0" if device == "cuda" else "cpu")
        dtype = torch.bfloat16 if bf16 and device == "cuda" else None
        return measure_step_seconds(model, batch, dev, autocast_dtype=dtype, warmup=1, repeats=3)

    task = ray.remote(measure).options(num_cpus=shape.cpus_per_replica, num_gpus=shape.gpus_per_replica)
    ref = task.remote(
        config.checkpoint,
        config.checkpoint_overrides,
        config.storage_options,
        _batch_size(config, shape),
        shape.device,
        shape.threads,
        config.bf16,
    )
    seconds = ray.get(ref)
    log.info("measured seconds per image by exit step: %s", ", ".join(format_duration(s) for s in seconds))
    return seconds


def _calibration(config: ClassifyConfig, model: Any, plan: ShardPlan, shape: PoolShape) -> tuple[np.ndarray, str]:
    if config.calibrate:
        import ray

        from gfpipe.classify.calibrate import calibrate_on_archive

        shards = [s for s, _, _ in plan.todo] or []
        if not shards:
            raise ValueError("--calibrate needs images to classify, and every shard is already done")
        task = ray.remote(calibrate_on_archive).options(
            num_cpus=shape.cpus_per_replica, num_gpus=shape.gpus_per_replica
        )
        scores = ray.get(
            task.remote(
                config.checkpoint,
                config.checkpoint_overrides,
                shards,
                config.calibrate,
                _batch_size(config, shape),
                shape.device,
                config.storage_options,
                config.read_options,
            )
        )
        if not len(scores):
            raise ValueError(f"--calibrate {config.calibrate}: no decodable image found in the input")
        return scores, f"{len(scores)} images sampled from the input"
    from gfpipe.evaluate import calibration_scores

    scores = calibration_scores(model)
    if scores is None:
        raise ValueError(
            f"{config.checkpoint} holds no calibration scores; pass --calibrate N to calibrate on N images "
            "of the input (label-free), or calibrate the checkpoint with gfpipe train"
        )
    source = (model.card.calibration or {}).get("source", "the checkpoint's calibration data")
    return scores, f"checkpoint: {source}"


def _start_ledger(
    config: ClassifyConfig,
    model: Any,
    plan: ShardPlan,
    macs: np.ndarray,
    shape: PoolShape,
    target: dict[str, Any],
    run_id: str,
) -> Any:
    import ray

    scores, source = _calibration(config, model, plan, shape)
    target["calibration_source"] = source
    log.info("budget: %s; thresholds from %s", target["message"], source)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: the ledger lives as long as the driver, whichever other node is lost.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger_class = ray.remote(BudgetLedger).options(name=_ledger_name(run_id), num_cpus=0, scheduling_strategy=here)
    return ledger_class.remote(
        target["costs"],
        target["target"],
        scores,
        macs,
        total_images=target.get("todo_images") or None,
        controller_options={"shadow_share": config.shadow_share, "seed": config.seed},
        extra_macs=config.calibrate * float(macs[-1]),
    )


# ---------------------------------------------------------------------------------------------
# The Ray Data pipeline
# ---------------------------------------------------------------------------------------------


def _dataset(
    config: ClassifyConfig,
    items: list[dict[str, Any]],
    shape: PoolShape,
    run_id: str,
    fault: str,
    preprocessing: Any,
    macs: np.ndarray,
) -> Any:
    import ray
    import ray.data

    from gfpipe.classify.reading import read_shards

    ledger_name = _ledger_name(run_id)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_shards,
        batch_size=1,
        num_cpus=0,
        concurrency=shape.read_tasks,
        # A memory reservation bounds the decode tasks per node; it also gives this stage resources
        # of its own, so Ray Data does not fuse it into the model actors (whose model would then
        # wait on decoding).
        memory=READ_TASK_MEMORY,
        fn_kwargs={
            "output": config.output,
            "storage_options": config.storage_options,
            "read_options": config.read_options,
            "preprocessing": preprocessing,
        },
    )
    return ds.map_batches(
        ClassifyReplica,
        batch_size=_batch_size(config, shape) * _batches_per_call(config, shape),
        compute=ray.data.ActorPoolStrategy(size=shape.replicas),
        num_cpus=shape.cpus_per_replica,
        num_gpus=shape.gpus_per_replica,
        fn_constructor_kwargs={
            "checkpoint": config.checkpoint,
            "checkpoint_overrides": config.checkpoint_overrides,
            "output": config.output,
            "storage_options": config.storage_options,
            "ledger_name": ledger_name,
            "run_id": run_id,
            "batch_size": _batch_size(config, shape),
            "device": shape.device,
            "threads": shape.threads,
            "bf16": config.bf16,
            "channels_last": config.channels_last,
            "top_k": config.top_k,
            "step_macs": macs.tolist(),
            "fault": fault,
        },
    )


class _Monitor:
    """Watches the run from a thread: a progress line every `interval` seconds (images done /
    total, images/s, ETA, cost vs budget), and a stall check.

    A Ray Data job whose cluster can no longer place its actors (a node was lost and what is left
    is smaller than one replica plus a read task) waits forever. A nightly job must fail instead,
    so that it can be re-run (done shards are kept): when no image has finished for
    `stall_seconds`, the monitor interrupts the driver with a message that shows the cluster's
    resources against what the pool needs.
    """

    def __init__(
        self,
        ledger: Any,
        total: int | None,
        budget_macs: float,
        interval: float,
        stall_seconds: float,
        shape: PoolShape,
    ) -> None:
        self.ledger, self.total, self.budget, self.interval = ledger, total, budget_macs, interval
        self.stall_seconds, self.shape = stall_seconds, shape
        self.stalled: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gfpipe-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        tick = min(self.interval, 5.0)
        last_line = last_change = time.monotonic()
        last_images = -1
        while not self._stop.wait(tick):
            try:
                status = ray.get(self.ledger.status.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - an unreachable ledger is no progress
                status = None
            now = time.monotonic()
            if status is not None and status["images"] != last_images:
                last_images, last_change = status["images"], now
            elif self.stall_seconds and now - last_change >= self.stall_seconds:
                self.stalled = self._stall_message(now - last_change, ray.cluster_resources())
                log.error("%s", self.stalled)
                # A signal, not _thread.interrupt_main(): the driver's main thread waits inside Ray
                # Data on a lock, which a signal interrupts at once and a pending interrupt does not.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return
            if status is not None and now - last_line >= self.interval:
                last_line = now
                self._line(status)

    def _stall_message(self, seconds: float, cluster: Mapping[str, float]) -> str:
        need = f"{self.shape.cpus_per_replica:g} CPU" + (
            f" + {self.shape.gpus_per_replica:g} GPU" if self.shape.gpus_per_replica else ""
        )
        return (
            f"no image finished for {format_duration(seconds)}: the job is stuck. The cluster now has "
            f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs; each model replica needs {need} "
            "(a lost node?). Re-run the same command to resume "
            "(done shards are kept); --stall-timeout changes this limit"
        )

    def _line(self, status: Mapping[str, Any]) -> None:
        images, seconds = status["images"], max(status["seconds"], 1e-9)
        rate = images / seconds
        done = f"{images}/{self.total}" if self.total else f"{images}"
        eta = f", ETA {format_duration(max(self.total - images, 0) / rate)}" if self.total and rate > 0 else ""
        mean = status["spent_macs"] / images if images else 0.0
        log.info(
            "classified %s images, %.1f images/s%s, cost %s per image vs budget %s (%.1f%%)",
            done,
            rate,
            eta,
            format_amount(mean),
            format_amount(self.budget),
            100 * mean / self.budget if self.budget else 0.0,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
