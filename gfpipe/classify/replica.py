"""The model actor of the classify job: one early-exit engine per replica, writing its own parts.

Ray Data calls `ClassifyReplica` with several model batches of image rows at a time. Inside one
call the requeue is real: the rows go through one `EarlyExitEngine.run`, so exited images leave
at once (their slots are freed), and the hard images of all the call's batches pool together for
each focus step, keeping model calls full; every row finishes before the call returns (no row
lives across calls: Ray Data has no end-of-stream hook, RAY_NOTES.md). The call then writes one
Parquet part per contiguous run of each shard's records (names fixed by the records, so a retry
overwrites), reports its final spend to the ledger, and yields only a small summary row per part.

Budget: the engine's controller is a `LedgerClient`, which keeps the thresholds the ledger last
sent, counts this call's exits, and sends them to the ledger after every model batch (without
waiting for the answer) and at the end of the call, under a call key (hash of the call's input
keys) and a per-try attempt token.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gfpipe.budget.control import ObservationBuffer, is_shadow
from gfpipe.classify.layout import OutputLayout, contiguous_runs
from gfpipe.classify.parts import write_part

log = logging.getLogger(__name__)

FAULT_ENV = "GFPIPE_CLASSIFY_FAULT"
CONFIDENCE_BINS = 20


class LedgerClient:
    """The engine's budget controller inside an actor call: thresholds from the ledger, spend to it.

    After every `sync_images` finished images (a model batch: the controller steers at the
    granularity of the engine's steps) it sends them to the ledger without waiting, and takes
    the new thresholds from the reply as soon as it has come (checked at every record, never
    waited for), so the thresholds lag the ledger by about one model batch. At most one report
    is in flight: while one is, finished images wait in the buffer for the next. Waiting for
    every reply cost 3-4 ms per model batch on 2 busy cores, about 10% of the model's time
    (BENCHMARKS.md, the classify job); the lag did not widen the landing (8 copies of a
    600-image job: 0.985-1.013 of the budget; 0.950-1.017 when every reply was waited for).
    The final report of a call is waited for: it marks the call's tally complete before the
    call's rows are handed on, and its reply is the thresholds the replica's next call starts
    with.
    """

    def __init__(
        self,
        ledger: Any,
        call: str,
        steps: int,
        shadow_share: float,
        seed: int,
        sync_images: int,
        thresholds: np.ndarray,
    ):
        self.ledger, self.call, self.attempt = ledger, call, uuid.uuid4().hex
        self.shadow_share, self.seed = shadow_share, seed
        self.sync_images = max(1, sync_images)
        self.buffer = ObservationBuffer(steps)
        self.keys: list[str] = []
        self._thresholds = np.asarray(thresholds, dtype=np.float64)
        self._in_flight: Any = None  # the report sent and not answered yet

    @property
    def thresholds(self) -> np.ndarray:
        return self._thresholds

    def admit(self, positions: Sequence[int]) -> np.ndarray:
        """Images enter the engine (keyed by position in the call): count them, pick the shadow ones
        by their real keys (the same choice in every run and actor)."""
        self.buffer.admit(len(positions))
        keys = self.keys
        return np.fromiter((is_shadow(keys[p], self.shadow_share, self.seed) for p in positions), bool, len(positions))

    def record(self, steps_run: Any, shadow_scores: Any = None) -> np.ndarray:
        self.buffer.record(steps_run, shadow_scores)
        self._take_reply(wait=False)
        if self._in_flight is None and self.buffer.images >= self.sync_images:
            self._in_flight = self.ledger.report.remote(self.call, self.attempt, self.buffer.drain(), False)
        return self._thresholds

    def finish(self) -> np.ndarray:
        """Report the rest as final and wait for the answer: the thresholds after this call."""
        self._take_reply(wait=True)
        report = self.ledger.report.remote(self.call, self.attempt, self.buffer.drain(), True)
        self._thresholds = np.asarray(_get(report), dtype=np.float64)
        return self._thresholds

    def _take_reply(self, wait: bool) -> None:
        if self._in_flight is None or not (wait or _ready(self._in_flight)):
            return
        self._thresholds = np.asarray(_get(self._in_flight), dtype=np.float64)
        self._in_flight = None


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


def _ready(ref: Any) -> bool:
    import ray

    return bool(ray.wait([ref], timeout=0, fetch_local=False)[0])


class ClassifyReplica:
    """Ray Data actor class (`map_batches(ClassifyReplica, compute=ActorPoolStrategy(...))`)."""

    def __init__(
        self,
        *,
        checkpoint: str,
        checkpoint_overrides: Mapping[str, Any] | None,
        output: str,
        storage_options: Mapping[str, Any] | None,
        ledger_name: str,
        run_id: str,
        batch_size: int,
        device: str,
        threads: int,
        bf16: bool,
        channels_last: bool,
        top_k: int,
        step_macs: Sequence[float] | None = None,
        fault: str = "",
    ) -> None:
        import ray

        from gfpipe.checkpoint import load_checkpoint
        from gfpipe.runtime import tune_allocator

        tune_allocator()  # before the model's first allocations (gfpipe.runtime)
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda:0" if device == "cuda" else "cpu")
        self.model = load_checkpoint(
            checkpoint, device=self.device, storage_options=storage_options, **dict(checkpoint_overrides or {})
        )
        self.prep = self.model.card.preprocessing
        self.layout = OutputLayout(output, storage_options)
        self.options = storage_options
        self.ledger = ray.get_actor(ledger_name)
        self.run_id = run_id
        self.batch_size = batch_size
        self.bf16 = bf16 and self.device.type == "cuda"
        self.channels_last = channels_last and self.device.type == "cuda"
        self.top_k = top_k
        self.step_macs = step_macs  # counted by the driver: the engine need not count them again
        # The shadow sample's share and seed come from the ledger (the one place that sizes the
        # share), asked here so that the driver never waits for the ledger to start.
        self.shadow_share, self.seed = ray.get(self.ledger.shadow.remote())
        # Each call starts with the thresholds the previous call's final report brought back.
        self.thresholds = np.asarray(ray.get(self.ledger.thresholds.remote()), dtype=np.float64)
        context = ray.get_runtime_context()
        self.node = f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}"
        self.calls = 0
        self.fault = fault
        mean = torch.tensor(self.prep.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.prep.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self._norm = (mean, std)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        self.calls += 1
        _maybe_fault(self.fault, self.calls, "start")
        keys = [str(k) for k in batch["key"]]
        call = hashlib.sha1("\n".join(keys).encode()).hexdigest()
        started = time.perf_counter()
        rows, client, stats = self._classify(batch, keys, call)
        model_seconds = time.perf_counter() - started
        summary = self._write_parts(batch, rows)
        _add_call_stats(summary, stats, self.batch_size, model_seconds)
        _maybe_fault(self.fault, self.calls, "written")
        self.thresholds = client.finish()
        yield summary

    # ------------------------------------------------------------------ classify

    def _classify(
        self, batch: Mapping[str, np.ndarray], keys: list[str], call: str
    ) -> tuple[list[dict[str, Any]], LedgerClient, Any]:
        """Error rows for what could not be decoded, the engine's rows for the rest (input order)."""
        from gfpipe.engine import EarlyExitEngine

        errors = [str(e) for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if not e]
        client = LedgerClient(
            self.ledger, call, self.model.config.T, self.shadow_share, self.seed, self.batch_size, self.thresholds
        )
        engine = EarlyExitEngine(
            self.model,
            None,
            self.batch_size,
            self.device,
            top_k=self.top_k,
            autocast_dtype=torch.bfloat16 if self.bf16 else None,
            channels_last=self.channels_last,
            controller=client,
            step_macs=self.step_macs,
        )
        client.keys = keys
        by_position: dict[int, dict[str, Any]] = {}
        if good:
            # The engine keys rows by position in this call: unique even if an archive repeats a key.
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][good]))
            by_position = {row["key"]: row for row in engine.run(self._batches(good, images))}
        rows = []
        for i, key in enumerate(keys):
            row = by_position.get(i) if not errors[i] else None
            if row is None:
                row = _error_row(errors[i] or "the engine returned no row for this image")
            width, height = int(batch["width"][i]), int(batch["height"][i])
            row.update(
                key=key,
                shard=str(batch["shard"][i]),
                width=width if width >= 0 else None,
                height=height if height >= 0 else None,
                run_id=self.run_id,
                node=self.node,
            )
            rows.append(row)
        return rows, client, engine.stats

    def _batches(self, keys: list[int], images: torch.Tensor) -> Iterator[tuple[list[int], torch.Tensor]]:
        """uint8 rows -> normalised float model batches on the device, one batch at a time."""
        mean, std = self._norm
        for start in range(0, len(keys), self.batch_size):
            chunk = images[start : start + self.batch_size].to(self.device, non_blocking=True)
            yield keys[start : start + self.batch_size], chunk.float().sub_(mean).div_(std)  # in place: one float copy

    # ------------------------------------------------------------------ output

    def _write_parts(self, batch: Mapping[str, np.ndarray], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """One part per contiguous run of one shard's ordinals -> the parts' summary rows."""
        by_shard: dict[str, list[int]] = defaultdict(list)
        for i, sid in enumerate(batch["sid"]):
            by_shard[str(sid)].append(i)
        summary: dict[str, list] = defaultdict(list)
        steps = self.model.config.T
        for sid, members in by_shard.items():
            ordinals = [int(batch["ordinal"][i]) for i in members]
            for first, last, positions in contiguous_runs(ordinals):
                part_rows = [rows[members[p]] for p in positions]
                write_part(self.layout.part_uri(sid, first, last), part_rows, self.options)
                summary["sid"].append(sid)
                summary["first"].append(first)
                summary["last"].append(last)
                summary["macs"].append(float(sum(r["macs"] for r in part_rows)))
                summary["exits"].append(_exit_counts(part_rows, steps))
                summary["confidence"].append(_confidence_counts(part_rows, steps))
                summary["errors"].append(_error_counts(part_rows))
                summary["node"].append(self.node)
        return {
            "sid": np.array(summary["sid"], dtype=object),
            "first": np.array(summary["first"], np.int64),
            "last": np.array(summary["last"], np.int64),
            "macs": np.array(summary["macs"], np.float64),
            "exits": np.array(summary["exits"], np.int64).reshape(-1, steps),
            "confidence": np.array(summary["confidence"], np.int64).reshape(-1, steps, CONFIDENCE_BINS),
            "errors": np.array(summary["errors"], dtype=object),
            "node": np.array(summary["node"], dtype=object),
        }


def _add_call_stats(summary: dict[str, np.ndarray], stats: Any, batch_size: int, seconds: float) -> None:
    """The call's model-batch figures, on its first summary row (zeros on the others): image-steps
    run, those in full batches, model calls, partial calls, seconds in the engine."""
    n = len(summary["sid"])
    image_steps = sum(size for _, size in stats.calls)
    full = sum(size for _, size in stats.calls if size == batch_size)
    partial = sum(1 for _, size in stats.calls if size < batch_size)
    for name, value, dtype in (
        ("image_steps", image_steps, np.int64),
        ("full_image_steps", full, np.int64),
        ("model_calls", len(stats.calls), np.int64),
        ("partial_calls", partial, np.int64),
        ("model_seconds", seconds, np.float64),
    ):
        column = np.zeros(n, dtype)
        if n:
            column[0] = value
        summary[name] = column


def _error_row(reason: str) -> dict[str, Any]:
    return {
        "label": None,
        "label_name": None,
        "confidence": None,
        "topk_labels": [],
        "topk_probs": [],
        "exit_step": 0,
        "macs": 0.0,
        "glimpses": [],
        "error": reason,
    }


def _exit_counts(rows: list[dict[str, Any]], steps: int) -> list[int]:
    counts = [0] * steps
    for row in rows:
        if row["error"] is None:
            counts[row["exit_step"] - 1] += 1
    return counts


def _confidence_counts(rows: list[dict[str, Any]], steps: int) -> list[list[int]]:
    """Histogram of top-1 confidence (CONFIDENCE_BINS bins on [0, 1]) at each exit step."""
    counts = np.zeros((steps, CONFIDENCE_BINS), np.int64)
    for row in rows:
        if row["error"] is None:
            b = min(int(row["confidence"] * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)
            counts[row["exit_step"] - 1, b] += 1
    return counts.tolist()


def _error_counts(rows: list[dict[str, Any]]) -> str:
    """JSON {reason kind: count} of the error rows (kind: the reason up to its first ':')."""
    import json

    counts: dict[str, int] = {}
    for row in rows:
        if row["error"] is not None:
            kind = row["error"].split(":", 1)[0][:80]
            counts[kind] = counts.get(kind, 0) + 1
    return json.dumps(counts)


def _maybe_fault(spec: str, calls: int, point: str) -> None:
    """Test hook (GFPIPE_CLASSIFY_FAULT in the driver, e.g. 'kill-actor:call=2:at=written:marker=/tmp/m'):
    the actor process exits at that call, at its start or after its parts are written (before its
    final ledger report), once per marker file; 'hang-actor:call=1' makes it wait forever instead."""
    if not spec.startswith(("kill-actor", "hang-actor")):
        return
    fields = dict(p.partition("=")[::2] for p in spec.split(":")[1:])
    if calls != int(fields.get("call", 1)) or fields.get("at", "start") != point:
        return
    from gfpipe.train.faults import claim

    if not claim(fields.get("marker")):
        return
    if spec.startswith("hang-actor"):
        log.warning("test fault: this model actor hangs at call %d", calls)
        time.sleep(10**6)
    log.warning("test fault: this model actor exits at call %d", calls)
    os._exit(1)
