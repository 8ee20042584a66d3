"""Which shards a run must classify, and when a shard it classified is done.

`plan_shards` compares the input's shards with the done markers of earlier runs: a shard whose
marker carries its current fingerprint (size and ETag/mtime) is skipped and its spend counted; a
shard whose content changed since it was done is redone (and reported as such); any other shard
is classified, after its leftovers (parts of an unfinished run, a stale record count) are removed,
so no row can be duplicated. `ShardTracker` collects the actors' part summaries on the driver and
writes a shard's done marker as soon as its parts tile all its records.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gfpipe.classify.layout import Fingerprint, OutputLayout, covers_exactly, shard_id
from gfpipe.data.io import read_bytes, write_json
from gfpipe.data.shards import Shard

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    """The run's work: shards to classify, markers of shards skipped, ids of shards redone."""

    todo: list[tuple[Shard, str, Fingerprint]] = field(default_factory=list)
    done: dict[str, dict] = field(default_factory=dict)  # sid -> marker (skipped this run)
    changed: list[str] = field(default_factory=list)  # sids redone because their content changed

    def read_items(self, read_tasks: int) -> list[dict[str, Any]]:
        """The read stage's work: one item per piece of each shard to classify, largest pieces
        first. A shard much larger than the others is split (`shard_pieces`) so that several
        read tasks decode it at once instead of one task decoding it while the rest wait."""
        sizes = [fp.size for _, _, fp in self.todo]
        work = [
            ((size or 0) / n, {"uri": shard.uri, "format": shard.format, "sid": sid, "piece": k, "pieces": n})
            for (shard, sid, _), size, n in zip(self.todo, sizes, shard_pieces(sizes, read_tasks), strict=True)
            for k in range(n)
        ]
        work.sort(key=lambda pair: -pair[0])  # stable: equal pieces keep the listing order
        return [item for _, item in work]


MAX_PIECES = 8  # each piece reads the whole shard's index (and, remote or compressed, the file)
PIECE_CHUNK = 128  # consecutive records a piece takes in turn: its parts stay contiguous runs


def shard_pieces(sizes: Sequence[int | None], read_tasks: int) -> list[int]:
    """Pieces per shard from their sizes in bytes (None: unknown, never split).

    The target piece is the smaller of the median shard and an equal share of the whole input
    per read task; a shard of at least twice the target is cut into about size / target pieces
    (at most MAX_PIECES). A balanced archive of at least `read_tasks` shards is not split; one
    shard 10x the others is cut in MAX_PIECES; a lone large shard in as many pieces as there are
    read tasks (at most MAX_PIECES).
    """
    known = sorted(s for s in sizes if s)
    if not known:
        return [1] * len(sizes)
    median = known[(len(known) - 1) // 2]  # the lower median: of two shards, the smaller
    target = min(median, sum(known) / max(1, read_tasks))
    return [1 if not size or size < 2 * target else max(1, min(MAX_PIECES, round(size / target))) for size in sizes]


def in_piece(piece: int, pieces: int) -> Callable[[int], bool] | None:
    """The records (by ordinal) that piece `piece` of `pieces` reads: chunks of PIECE_CHUNK
    records in turn. None for a whole shard."""
    if pieces <= 1:
        return None
    return lambda ordinal: (ordinal // PIECE_CHUNK) % pieces == piece


def plan_shards(shards: Sequence[Shard], layout: OutputLayout, fresh: bool = False) -> ShardPlan:
    """Compare the input with the done markers (none when `fresh`: --overwrite). Only reads:
    `clear_leftovers` removes what the run will redo, once every check has passed."""
    markers = {} if fresh else layout.list_json("done")
    plan = ShardPlan()
    for shard in shards:
        sid = shard_id(shard.uri)
        now = layout.fingerprint(shard.uri)
        marker = markers.get(sid)
        if marker is not None and marker.get("uri") == shard.uri and marker.get("fingerprint") == now.to_dict():
            plan.done[sid] = marker
            continue
        if marker is not None:
            plan.changed.append(sid)
            log.info(
                "%s changed since it was classified (%s -> %s): classifying it again",
                shard.uri,
                marker.get("fingerprint"),
                now.to_dict(),
            )
        plan.todo.append((shard, sid, now))
    return plan


def clear_leftovers(plan: ShardPlan, layout: OutputLayout) -> None:
    """Remove the parts, record counts and markers of the shards this run classifies, so that no
    row of an unfinished or outdated run can stay beside the new ones."""
    for _, sid, _ in plan.todo:
        layout.remove_shard_outputs(sid)


class ShardTracker:
    """Part summaries -> done markers. A part reported twice (a retried call) replaces itself."""

    def __init__(self, layout: OutputLayout, plan: ShardPlan, run_id: str, steps: int) -> None:
        self.layout = layout
        self.run_id = run_id
        self.steps = steps
        self.work = {sid: (shard, fingerprint) for shard, sid, fingerprint in plan.todo}
        self.parts: dict[str, dict[tuple[int, int], dict[str, Any]]] = {sid: {} for sid in self.work}
        self.records: dict[str, int] = {}
        self.done: dict[str, dict] = {}

    def add(self, row: Mapping[str, Any]) -> str | None:
        """One part's summary row from an actor; returns the shard id if that made the shard done.

        A part can be written again after its shard is done: when a node is lost, Ray re-runs
        actor calls whose outputs were on it, and the retry (with the thresholds of that moment)
        overwrites the part with rows that exited elsewhere. The marker is then written again, so
        it always describes the parts on disk.
        """
        sid = str(row["sid"])
        if sid not in self.work:
            return None
        was_done = sid in self.done
        self.parts[sid][(int(row["first"]), int(row["last"]))] = {
            "macs": float(row["macs"]),
            "exits": np.asarray(row["exits"], np.int64),
            "confidence": np.asarray(row["confidence"], np.int64),
            "errors": json.loads(row["errors"]) if isinstance(row["errors"], str) else dict(row["errors"]),
            "node": str(row["node"]),
            "rows": int(row["last"]) - int(row["first"]) + 1,
        }
        if was_done:
            log.info("%s: a part was written again after the shard was done; its marker is updated", sid)
        return sid if self._complete(sid) and not was_done else None

    def _complete(self, sid: str) -> bool:
        records = self._records(sid)
        if records is None or not covers_exactly(list(self.parts[sid]), records):
            return False
        self._mark_done(sid, records)
        return True

    def _records(self, sid: str) -> int | None:
        if sid not in self.records:
            try:
                data = json.loads(read_bytes(self.layout.records_uri(sid), self.layout.options))
            except (OSError, ValueError):
                return None  # the read task has not finished the shard yet
            self.records[sid] = int(data["records"])
        return self.records[sid]

    def _mark_done(self, sid: str, records: int) -> None:
        shard, fingerprint = self.work[sid]
        parts = self.parts[sid].values()
        errors: dict[str, int] = {}
        nodes: dict[str, int] = {}
        for part in parts:
            for reason, n in part["errors"].items():
                errors[reason] = errors.get(reason, 0) + n
            nodes[part["node"]] = nodes.get(part["node"], 0) + part["rows"]
        marker = {
            "uri": shard.uri,
            "format": shard.format,
            "sid": sid,
            "fingerprint": fingerprint.to_dict(),
            "records": records,
            "parts": len(self.parts[sid]),
            "exits": np.sum([p["exits"] for p in parts], axis=0).tolist() if parts else [0] * self.steps,
            "macs": float(sum(p["macs"] for p in parts)),
            "confidence": np.sum([p["confidence"] for p in parts], axis=0).tolist() if parts else [],
            "errors": errors,
            "nodes": nodes,
            "run_id": self.run_id,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.layout.done_uri(sid), marker, self.layout.options)
        self.done[sid] = marker

    def finish(self) -> None:
        """At the end of the stream, when every read task has written its shard's record count:
        mark the shards whose count came after their last part, and those with no records (they
        get no part)."""
        for sid in self.work:
            if sid in self.done:
                continue
            if self.parts[sid]:
                self._complete(sid)
            elif self._records(sid) == 0:
                self._mark_done(sid, 0)

    def unfinished(self) -> list[str]:
        """Shards of this run without a done marker, with what is missing."""
        out = []
        for sid, (shard, _) in self.work.items():
            if sid in self.done:
                continue
            records = self._records(sid)
            got = sum(p["rows"] for p in self.parts[sid].values())
            out.append(f"{shard.uri} ({got} of {'?' if records is None else records} records)")
        return out
