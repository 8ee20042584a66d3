"""Anytime accuracy and accuracy under a sweep of budgets, from one pass over labelled data.

Every image runs all T steps once (`GFNet.anytime`); the per-step exit scores then answer every
budget by simulation, which gives exactly the engine's exits (the engine tests check that
equivalence). Thresholds for each budget come from calibration scores: separate calibration
data, else those stored in the checkpoint, else the evaluation data itself (optimistic: the
thresholds have seen the test images; the result says which was used).

Labels are matched to the model's classes by name wherever the data names its classes, and a
mismatch is an error before any accuracy is printed: a number computed against the wrong
classes is worse than none.
"""

from __future__ import annotations

import collections
import io
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gfpipe.budget.costs import measure_step_seconds, step_costs
from gfpipe.budget.grammar import Budget
from gfpipe.budget.scores import exit_scores, scores_from_confidences
from gfpipe.budget.solver import simulate, solve_thresholds
from gfpipe.model.gfnet import GFNet

log = logging.getLogger(__name__)

LabelFn = Callable[[Mapping[str, Any]], int]
"""Maps a decoded record to the model's class index (-1: unlabelled); raises on a mismatch."""


@dataclass
class ErrorTally:
    """Images that could not be used: counts by reason, and the first few keys with their reason."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: str, reason: str) -> None:
        self.counts[reason.split(":", 1)[0] if reason.startswith("shard:") else reason] += 1
        if len(self.examples) < 3:
            self.examples.append((key, reason))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """`N could not be used: KEY: REASON; ...` (empty when there were none)."""
        if not self.total:
            return ""
        shown = "; ".join(f"{key}: {reason}" for key, reason in self.examples)
        more = f"; and {self.total - len(self.examples)} more" if self.total > len(self.examples) else ""
        return f"{self.total} could not be used: {shown}{more}"

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": dict(self.counts.most_common()),
            "examples": [{"key": k, "error": e} for k, e in self.examples],
        }


@dataclass
class AnytimeOutputs:
    """Per-step exit score and predicted class of every usable image, with labels."""

    keys: list[str]
    scores: np.ndarray  # (N, T) float32 exit scores (gfpipe.budget.scores)
    predictions: np.ndarray  # (N, T) int64
    labels: np.ndarray  # (N,) int64 in the model's class indices, -1 where unknown
    errors: ErrorTally

    @property
    def labelled(self) -> np.ndarray:
        return self.labels >= 0


def _batches(
    records: Iterable[Mapping[str, Any]], model: GFNet, batch_size: int, label_of: LabelFn, errors: ErrorTally
) -> Iterator[tuple[list[str], torch.Tensor, list[int]]]:
    from gfpipe.data.decode import preprocess

    prep = model.card.preprocessing
    keys: list[str] = []
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for record in records:
        if record["image"] is None:
            errors.add(record["key"], record["error"] or "unreadable")
            continue
        labels.append(label_of(record))
        keys.append(record["key"])
        arrays.append(preprocess(record["image"], prep))
        if len(keys) == batch_size:
            yield keys, torch.from_numpy(np.stack(arrays)), labels
            keys, arrays, labels = [], [], []
    if keys:
        yield keys, torch.from_numpy(np.stack(arrays)), labels


def plain_label(record: Mapping[str, Any]) -> int:
    """The record's own integer label, unchecked (-1 when it has none)."""
    return -1 if record.get("label") is None else int(record["label"])


@torch.inference_mode()
def anytime_outputs(
    model: GFNet,
    records: Iterable[Mapping[str, Any]],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    label_of: LabelFn = plain_label,
    progress: Any = None,
) -> AnytimeOutputs:
    """Run all T steps on every decodable record (`gfpipe.data.read_images` rows).

    Records that cannot be decoded, or whose model output is not finite, are tallied in
    `errors` with their reason and left out. `progress` (a `gfpipe.progress.Progress`) is
    advanced by every record read.
    """
    model = model.to(device).eval()
    errors = ErrorTally()
    keys: list[str] = []
    scores, preds, labels = [], [], []
    seen = 0
    for batch_keys, images, batch_labels in _batches(records, model, batch_size, label_of, errors):
        logits = model.anytime(images.to(device)).float()  # (T, n, K)
        score = exit_scores(logits).T.cpu().numpy()  # (n, T)
        pred = logits.argmax(-1).T.cpu().numpy()  # (n, T)
        ok = np.isfinite(score).all(axis=1)
        for i in np.flatnonzero(~ok):
            errors.add(batch_keys[i], "model output is not finite (NaN or Inf logits)")
        scores.append(score[ok])
        preds.append(pred[ok])
        keys += [k for k, good in zip(batch_keys, ok, strict=True) if good]
        labels += [lab for lab, good in zip(batch_labels, ok, strict=True) if good]
        if progress is not None:
            read = len(keys) + errors.total
            progress.update(read - seen)
            seen = read
    if progress is not None:
        progress.update(len(keys) + errors.total - seen)
    T = model.config.T
    return AnytimeOutputs(
        keys,
        np.concatenate(scores) if scores else np.zeros((0, T), np.float32),
        np.concatenate(preds) if preds else np.zeros((0, T), np.int64),
        np.asarray(labels, np.int64),
        errors,
    )


def _accuracy(outputs: AnytimeOutputs, exit_steps: np.ndarray) -> float | None:
    labelled = outputs.labelled
    if not labelled.any():
        return None
    chosen = outputs.predictions[np.arange(exit_steps.size), exit_steps - 1]
    return float((chosen[labelled] == outputs.labels[labelled]).mean())


def _at_target(
    costs: np.ndarray,
    calibration: np.ndarray,
    outputs: AnytimeOutputs,
    target: float,
    unit: str = "MACs",
    macs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Thresholds solved for `target` on the calibration scores, applied to the evaluation data."""
    solution = solve_thresholds(costs, calibration, target, unit=unit)
    sim = simulate(outputs.scores, solution.thresholds, costs if macs is None else macs)
    return {
        "mean_macs": sim.mean_cost,
        "accuracy": _accuracy(outputs, sim.exit_steps),
        "exits": sim.counts.tolist(),
        "thresholds": solution.thresholds.tolist(),
    }


def budget_sweep(
    costs: list[float], calibration: np.ndarray, outputs: AnytimeOutputs, points: int = 20
) -> list[dict[str, Any]]:
    """Accuracy and exits at `points` budgets spread from the glance-only to the all-T cost."""
    c = np.asarray(costs, np.float64)
    return [
        {"target_macs": float(target), **_at_target(c, calibration, outputs, float(target))}
        for target in np.linspace(c[0], c[-1], points)
    ]


def at_budget(
    budget: Budget,
    model: GFNet,
    calibration: np.ndarray,
    outputs: AnytimeOutputs,
    batch_size: int,
    device: torch.device | str,
) -> dict[str, Any]:
    """Thresholds, exits, cost and accuracy at one user budget (mean, total or wall-clock)."""
    costs = np.asarray(step_costs(model), np.float64)
    step_seconds = measure_step_seconds(model, batch_size, device) if budget.kind == "time" else None
    resolved = budget.resolve(costs, step_seconds=step_seconds, num_images=len(outputs.keys))
    result = _at_target(resolved.costs, calibration, outputs, resolved.target, resolved.unit, macs=costs)
    return {
        "budget": str(budget),
        "message": resolved.message,
        "clamped": resolved.clamped,
        "unit": resolved.unit,
        "target": resolved.target,
        "step_seconds": step_seconds,
        **result,
    }


def calibration_scores(model: GFNet) -> np.ndarray | None:
    """The checkpoint's calibration exit scores (N, T), or None when it holds none.

    Older files stored max-softmax `confidences`; those are converted (their saturated 1.0
    values stay tied: re-calibrate such a model to rank its most confident images).
    """
    calibration = model.card.calibration or {}
    if calibration.get("scores") is not None:
        return np.asarray(torch.as_tensor(calibration["scores"]).float().numpy())
    if calibration.get("confidences") is not None:
        return scores_from_confidences(calibration["confidences"])
    return None


def evaluate(
    model: GFNet,
    records: Iterable[Mapping[str, Any]],
    calibration_records: Iterable[Mapping[str, Any]] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    points: int = 20,
    budget: Budget | None = None,
    label_of: LabelFn = plain_label,
    progress: Any = None,
) -> dict[str, Any]:
    """Anytime accuracy per step, the budgeted sweep and (when given) one budget, as a JSON-ready dict.

    `label_of` maps each record to the model's class index and raises on a label that does not
    belong to the model (see `gfpipe.data.labels`).
    """
    outputs = anytime_outputs(model, records, batch_size, device, label_of, progress)
    if not outputs.keys:
        raise ValueError(f"no usable images to evaluate: {outputs.errors.summary() or 'the data is empty'}")
    costs = step_costs(model)
    if calibration_records is not None:
        calibration = anytime_outputs(model, calibration_records, batch_size, device, plain_label).scores
        source = "calibration data"
        if not len(calibration):
            raise ValueError("the calibration data holds no usable images")
    elif (stored := calibration_scores(model)) is not None:
        calibration, source = stored, "checkpoint calibration"
    else:
        calibration, source = outputs.scores, "evaluation data (optimistic: thresholds saw these images)"
    labelled = outputs.labelled
    anytime = None
    if labelled.any():
        anytime = (outputs.predictions[labelled] == outputs.labels[labelled, None]).mean(0).tolist()
    return {
        "images": len(outputs.keys),
        "labelled": int(labelled.sum()),
        "errors": outputs.errors.to_json(),
        "step_macs": costs,
        "anytime_accuracy": anytime,
        "budgeted": budget_sweep(costs, calibration, outputs, points),
        "threshold_source": source,
        "threshold_units": "exit score: log(p / (1 - p)) of the top class's max-softmax p",
        "at_budget": None if budget is None else at_budget(budget, model, calibration, outputs, batch_size, device),
    }


def plot_png(result: Mapping[str, Any], title: str) -> bytes:
    """Accuracy vs mean MACs, the budgeted curve and the anytime points, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    scale, unit = (1e9, "GMACs") if result["step_macs"][-1] >= 1e8 else (1e6, "MMACs")
    budgeted = [r for r in result["budgeted"] if r["accuracy"] is not None]
    ax.plot(
        [r["mean_macs"] / scale for r in budgeted],
        [100 * r["accuracy"] for r in budgeted],
        "-o",
        ms=3,
        label="budgeted (early exit)",
    )
    if result["anytime_accuracy"]:
        ax.plot(
            [c / scale for c in result["step_macs"]],
            [100 * a for a in result["anytime_accuracy"]],
            "s--",
            label="anytime (all images, step t)",
        )
    ax.set_xlabel(f"mean {unit} per image")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def save_outputs(
    result: Mapping[str, Any], out: str, title: str, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Write OUT/evaluate.json (strict JSON) and OUT/accuracy_vs_macs.png to any URI; returns them."""
    from gfpipe.data.io import join_uri, write_bytes, write_json

    json_uri, png_uri = join_uri(out, "evaluate.json"), join_uri(out, "accuracy_vs_macs.png")
    write_json(json_uri, result, storage_options)
    write_bytes(png_uri, plot_png(result, title), storage_options)
    return [json_uri, png_uri]
