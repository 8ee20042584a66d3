"""`gfpipe evaluate`: anytime accuracy and accuracy under a sweep of budgets, from one pass.

Every image runs all T steps once (`GFNet.anytime`); the per-step confidences then answer every
budget by simulation, which gives exactly the engine's exits (the engine tests check that
equivalence). Thresholds for each budget come from calibration confidences: `--calibration`
data, else those stored in the checkpoint, else the evaluation data itself (optimistic: the
thresholds have seen the test images; the output says which was used).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from gfpipe.budget.costs import format_macs, measure_step_seconds, step_costs
from gfpipe.budget.grammar import Budget, add_budget_arguments
from gfpipe.budget.solver import exit_fractions, simulate, thresholds
from gfpipe.model.gfnet import GFNet

log = logging.getLogger(__name__)


@dataclass
class AnytimeOutputs:
    """Per-step max-softmax and predicted class of every readable image, with labels."""

    keys: list[str]
    confidences: np.ndarray  # (N, T) float32
    predictions: np.ndarray  # (N, T) int64
    labels: np.ndarray  # (N,) int64, -1 where unknown
    errors: int  # images that could not be read or decoded

    @property
    def labelled(self) -> np.ndarray:
        return self.labels >= 0


def _batches(records: Iterable[Mapping[str, Any]], model: GFNet, batch_size: int, counts: dict) -> Iterator[tuple]:
    from gfpipe.data.decode import preprocess

    prep = model.card.preprocessing
    keys, arrays, labels = [], [], []
    for record in records:
        if record["image"] is None:
            counts["errors"] += 1
            log.debug("skipping %s: %s", record["key"], record["error"])
            continue
        keys.append(record["key"])
        arrays.append(preprocess(record["image"], prep))
        labels.append(-1 if record["label"] is None else int(record["label"]))
        if len(keys) == batch_size:
            yield keys, torch.from_numpy(np.stack(arrays)), labels
            keys, arrays, labels = [], [], []
    if keys:
        yield keys, torch.from_numpy(np.stack(arrays)), labels


@torch.inference_mode()
def anytime_outputs(
    model: GFNet,
    records: Iterable[Mapping[str, Any]],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> AnytimeOutputs:
    """Run all T steps on every decodable record (`gfpipe.data.read_images` rows)."""
    model = model.to(device).eval()
    counts = {"errors": 0}
    keys: list[str] = []
    conf, pred, labels = [], [], []
    for batch_keys, images, batch_labels in _batches(records, model, batch_size, counts):
        probs = model.anytime(images.to(device)).float().softmax(-1)  # (T, n, K)
        c, p = probs.max(-1)
        conf.append(c.T.cpu().numpy())
        pred.append(p.T.cpu().numpy())
        keys += batch_keys
        labels += batch_labels
        if len(keys) % (batch_size * 20) == 0:
            log.info("evaluated %d images", len(keys))
    T = model.config.T
    return AnytimeOutputs(
        keys,
        np.concatenate(conf) if conf else np.zeros((0, T), np.float32),
        np.concatenate(pred) if pred else np.zeros((0, T), np.int64),
        np.asarray(labels, np.int64),
        counts["errors"],
    )


def budget_sweep(
    costs: list[float],
    calibration: np.ndarray,
    outputs: AnytimeOutputs,
    points: int = 20,
) -> list[dict[str, Any]]:
    """Accuracy and exits at `points` budgets spread from the glance-only to the all-T cost."""
    labelled = outputs.labelled
    rows = []
    for target in np.linspace(costs[0], costs[-1], points):
        eta = thresholds(calibration, exit_fractions(costs, float(target)))
        sim = simulate(outputs.confidences, eta, costs)
        accuracy = None
        if labelled.any():
            chosen = outputs.predictions[np.arange(len(sim.exit_steps)), sim.exit_steps - 1]
            accuracy = float((chosen[labelled] == outputs.labels[labelled]).mean())
        rows.append({
            "target_macs": float(target),
            "mean_macs": sim.mean_cost,
            "accuracy": accuracy,
            "exits": sim.counts.tolist(),
            "thresholds": [float(e) for e in eta],
        })
    return rows


def at_budget(
    budget: Budget,
    model: GFNet,
    calibration: np.ndarray,
    outputs: AnytimeOutputs,
    batch_size: int,
    device: torch.device | str,
) -> dict[str, Any]:
    """Thresholds, exits, cost and accuracy at one user budget (mean, total or wall-clock)."""
    costs = step_costs(model)
    step_seconds = None
    if budget.kind == "time":
        step_seconds = measure_step_seconds(model, batch_size, device)
    resolved = budget.resolve(costs, step_seconds=step_seconds, num_images=len(outputs.keys))
    eta = thresholds(calibration, exit_fractions(resolved.costs, resolved.target, resolved.unit))
    sim = simulate(outputs.confidences, eta, costs)
    labelled = outputs.labelled
    accuracy = None
    if labelled.any():
        chosen = outputs.predictions[np.arange(len(sim.exit_steps)), sim.exit_steps - 1]
        accuracy = float((chosen[labelled] == outputs.labels[labelled]).mean())
    return {
        "budget": str(budget),
        "message": resolved.message,
        "clamped": resolved.clamped,
        "unit": resolved.unit,
        "target": resolved.target,
        "step_seconds": step_seconds,
        "mean_macs": sim.mean_cost,
        "accuracy": accuracy,
        "exits": sim.counts.tolist(),
        "thresholds": [float(e) for e in eta],
    }


def evaluate(
    model: GFNet,
    records: Iterable[Mapping[str, Any]],
    calibration_records: Iterable[Mapping[str, Any]] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    points: int = 20,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Anytime accuracy per step, the budgeted sweep and (when given) one budget, as a JSON-ready dict."""
    outputs = anytime_outputs(model, records, batch_size, device)
    if len(outputs.keys) == 0:
        raise ValueError(f"no readable images to evaluate ({outputs.errors} could not be read)")
    costs = step_costs(model)
    if calibration_records is not None:
        calibration, source = anytime_outputs(model, calibration_records, batch_size, device).confidences, "calibration data"
    elif model.card.calibration and model.card.calibration.get("confidences") is not None:
        calibration, source = np.asarray(model.card.calibration["confidences"]), "checkpoint calibration"
    else:
        calibration, source = outputs.confidences, "evaluation data (optimistic: thresholds saw these images)"
    labelled = outputs.labelled
    anytime = None
    if labelled.any():
        anytime = (outputs.predictions[labelled] == outputs.labels[labelled, None]).mean(0).tolist()
    return {
        "images": len(outputs.keys),
        "labelled": int(labelled.sum()),
        "errors": outputs.errors,
        "step_macs": costs,
        "anytime_accuracy": anytime,
        "budgeted": budget_sweep(costs, calibration, outputs, points),
        "threshold_source": source,
        "at_budget": None if budget is None else at_budget(budget, model, calibration, outputs, batch_size, device),
    }


def plot(result: dict[str, Any], path: str, title: str) -> None:
    """Accuracy vs mean MACs: the budgeted curve and the anytime points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    scale, unit = (1e9, "GMACs") if result["step_macs"][-1] >= 1e8 else (1e6, "MMACs")
    budgeted = [r for r in result["budgeted"] if r["accuracy"] is not None]
    ax.plot([r["mean_macs"] / scale for r in budgeted], [100 * r["accuracy"] for r in budgeted],
            "-o", ms=3, label="budgeted (early exit)")
    if result["anytime_accuracy"]:
        ax.plot([c / scale for c in result["step_macs"]], [100 * a for a in result["anytime_accuracy"]],
                "s--", label="anytime (all images, step t)")
    ax.set_xlabel(f"mean {unit} per image")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# `gfpipe evaluate`
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gfpipe.data.io import add_storage_arguments

    parser.add_argument("--checkpoint", required=True, help="gfpipe or official GFNet checkpoint (path or URI)")
    parser.add_argument("--data", required=True, help="labelled images: shards, prefix, glob or brace pattern")
    parser.add_argument("--out", required=True, help="output folder (local)")
    parser.add_argument("--calibration", help="separate data to solve thresholds on (default: checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=20, help="budgets in the sweep")
    add_budget_arguments(parser)
    parser.add_argument("--format", default="auto", choices=["auto", "wds", "parquet", "folder"])
    add_storage_arguments(parser)
    parser.add_argument("--arch", help="official checkpoints without metadata: backbone name")
    parser.add_argument("--patch-size", type=int, help="official checkpoints without metadata")
    parser.add_argument("--T", type=int, help="official checkpoints without metadata")


def run(args: argparse.Namespace) -> int:
    from gfpipe.checkpoint import load_checkpoint
    from gfpipe.data import read_images
    from gfpipe.data.io import storage_options_from_args

    storage_options = storage_options_from_args(args)
    overrides = {k: v for k, v in (("arch", args.arch), ("patch_size", args.patch_size), ("T", args.T)) if v is not None}
    model = load_checkpoint(args.checkpoint, device=args.device, storage_options=storage_options, **overrides)
    draft = model.card.preprocessing.resize

    def read(uri: str):
        return read_images(uri, storage_options, format=args.format, draft_size=draft)

    result = evaluate(model, read(args.data), read(args.calibration) if args.calibration else None,
                      args.batch_size, args.device, args.points, args.budget)
    result.update(checkpoint=str(args.checkpoint), data=args.data)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "evaluate.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    plot(result, os.path.join(args.out, "accuracy_vs_macs.png"), f"{model.config.backbone} on {args.data}")
    print(format_table(result))
    print(f"wrote {os.path.join(args.out, 'evaluate.json')} and accuracy_vs_macs.png")
    return 0


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['images']} images ({result['labelled']} labelled, {result['errors']} unreadable); "
             f"thresholds from {result['threshold_source']}"]
    if result["anytime_accuracy"]:
        lines.append("anytime accuracy: " + "  ".join(
            f"step {t} ({format_macs(c)}): {100 * a:.2f}%"
            for t, (c, a) in enumerate(zip(result["step_macs"], result["anytime_accuracy"]), 1)))
    lines.append(f"{'budget':>10} {'mean MACs':>10} {'accuracy':>9}  exits per step")
    for r in result["budgeted"]:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        lines.append(f"{format_macs(r['target_macs']):>10} {format_macs(r['mean_macs']):>10} {acc:>9}  {r['exits']}")
    chosen = result.get("at_budget")
    if chosen:
        acc = "-" if chosen["accuracy"] is None else f"{100 * chosen['accuracy']:.2f}%"
        lines.append(f"{chosen['budget']}: {chosen['message']}")
        lines.append(f"  mean MACs {format_macs(chosen['mean_macs'])}, accuracy {acc}, exits {chosen['exits']}, "
                     f"thresholds {[round(e, 4) for e in chosen['thresholds']]}")
    return "\n".join(lines)
