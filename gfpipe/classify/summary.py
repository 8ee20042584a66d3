"""The run summary (`_gfpipe/summary.json`) and the sample images of the report.

The summary covers every shard of the input that is done, this run's and earlier runs' alike
(from their done markers), so a resumed or nightly run reports the whole archive; the `run`
section says what this run itself did (shards classified, skipped, redone; its images/s).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gfpipe.budget.grammar import format_amount
from gfpipe.classify.layout import OutputLayout
from gfpipe.classify.parts import read_rows
from gfpipe.config import to_dict
from gfpipe.data.decode import decode_uint8
from gfpipe.data.shards import ReadOptions, Shard, iter_shard_records


def _finite(values: Sequence[float]) -> list[Any]:
    """Thresholds for JSON: +-inf as strings (strict JSON has no infinity)."""
    return [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in map(float, values)]


def build_summary(
    *,
    config: Any,
    run_id: str,
    model: Any,
    markers: Mapping[str, dict],
    run_shards: Mapping[str, int],
    status: Mapping[str, Any],
    target: Mapping[str, Any],
    elapsed: float,
    nodes_run: Mapping[str, int],
    ray_version: str,
    bins: int,
) -> dict[str, Any]:
    """`markers`: done markers of every input shard; `run_shards`: counts (total, classified,
    skipped_done, redone_changed); `status`: the ledger's; `target`: the resolved budget."""
    steps = model.config.T
    step_macs = [float(c) for c in target["step_macs"]]
    exits = np.zeros(steps, np.int64)
    confidence = np.zeros((steps, bins), np.int64)
    errors: dict[str, int] = {}
    nodes: dict[str, int] = {}
    images = spent = 0.0
    for marker in markers.values():
        images += marker["records"]
        spent += marker["macs"]
        exits += np.asarray(marker["exits"], np.int64)
        if marker.get("confidence"):
            confidence += np.asarray(marker["confidence"], np.int64)
        for reason, n in marker["errors"].items():
            errors[reason] = errors.get(reason, 0) + n
        for node, n in marker.get("nodes", {}).items():
            nodes[node] = nodes.get(node, 0) + n
    classified = int(exits.sum())
    spent += float(status.get("extra_macs", 0.0))
    realized = spent / classified if classified else 0.0
    budget_per_image = float(target["macs_per_image"])
    run_images = int(status.get("images", 0))
    return {
        "run_id": run_id,
        "input": config.input,
        "output": config.output,
        "model": {
            "checkpoint": str(config.checkpoint),
            "backbone": model.config.backbone,
            "T": steps,
            "patch_size": model.config.patch_size,
            "input_size": model.config.input_size,
            "class_names_count": len(model.class_names),
            "provenance": {k: v for k, v in model.card.provenance.items() if k != "history"},
        },
        "images": int(images),
        "classified": classified,
        "errors": int(sum(errors.values())),
        "errors_by_reason": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "exits": exits.tolist(),
        "step_macs": step_macs,
        "budget": {
            "text": str(config.budget),
            "kind": config.budget.kind,
            "value": config.budget.value,
            "target_macs_per_image": budget_per_image,
            "realized_macs_per_image": realized,
            "ratio": realized / budget_per_image if budget_per_image else None,
            "total_macs": spent,
            "calibration_macs": float(status.get("extra_macs", 0.0)),
            "this_run_target": target.get("message"),
            "unit": target.get("unit", "MACs"),
            "clamped": bool(target.get("clamped", False)),
            "readable": f"{format_amount(realized)} realized vs {format_amount(budget_per_image)} per image",
        },
        "thresholds": {
            "initial": _finite(status.get("initial_thresholds", [])),
            "final": _finite(status.get("thresholds", [])),
            "calibration": target.get("calibration_source"),
        },
        "timeline": status.get("timeline", []),
        "confidence_hist": {"bins": np.linspace(0, 1, bins + 1).tolist(), "per_step": confidence.tolist()},
        "images_per_s": run_images / elapsed if elapsed > 0 else None,
        "elapsed_s": elapsed,
        "shards": dict(run_shards),
        "nodes": nodes,
        "nodes_this_run": dict(nodes_run),
        "retried_calls": int(status.get("replaced_attempts", 0)),
        "ray_version": ray_version,
        "config": _config_dict(config),
    }


def _config_dict(config: Any) -> dict[str, Any]:
    out = to_dict(dataclasses.replace(config, storage_options=None))
    out["budget"] = str(config.budget)
    if config.storage_options:
        out["storage_options"] = sorted(config.storage_options)  # names only: values may be secrets
    return out


def report_samples(
    layout: OutputLayout,
    markers: Mapping[str, dict],
    count: int,
    model: Any,
    read_options: ReadOptions,
) -> list[dict[str, Any]]:
    """Up to `count` rows of one done shard, deepest exits first, with their images re-read."""
    if count <= 0 or not markers:
        return []
    marker = max(markers.values(), key=lambda m: (sum(m["exits"][1:]), -len(m["uri"])))
    table = read_rows(layout.shard_dir(marker["sid"]), layout.options)
    rows = [r for r in table.to_pylist() if r["error"] is None]
    rows.sort(key=lambda r: (-r["exit_step"], r["key"]))
    chosen = {r["key"]: r for r in rows[:count]}
    if not chosen:
        return []
    prep = model.card.preprocessing
    shard = Shard(marker["uri"], marker["format"])
    samples = []
    for record in iter_shard_records(shard, layout.options, read_options):
        row = chosen.get(record.key)
        if row is None or record.error is not None:
            continue
        image, _, _ = decode_uint8(record.data, prep)
        if image is not None:
            samples.append(
                {
                    "image": image.transpose(1, 2, 0),
                    "glimpses": row["glimpses"],
                    "patch_size": model.config.patch_size,
                    "label_name": row["label_name"],
                    "exit_step": row["exit_step"],
                    "confidence": row["confidence"],
                    "key": row["key"],
                }
            )
        if len(samples) == len(chosen):
            break
    return samples
