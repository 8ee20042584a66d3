"""The budget grammar shared by the CLI and the jobs: parse, explain and resolve a compute budget.

A user states a budget in one of three ways:

- mean per image, in Multiply-Adds:  ``--budget 1.2G``       (suffixes K, M, G, T, P)
- total for the dataset:             ``--budget-total 3.5P`` (divided by the number of images)
- wall-clock for the whole job:      ``--budget-time 2h``    (also ``90m``, ``45s``, ``1h30m``)

`parse_budget` turns the text into a frozen `Budget`; `Budget.resolve` turns it into a target
mean cost per image in the units of the per-step costs the solver uses (MACs, or seconds
measured on the device for a wall-clock budget). A budget above the all-steps cost is clamped
(every image runs all T steps; logged and flagged), a budget below the glance-only cost is an
error that names both limits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

BudgetKind = Literal["mean", "total", "time"]
KINDS: tuple[str, ...] = ("mean", "total", "time")

# Relative slack under which a target counts as exactly the glance-only or all-steps cost, so
# that a budget computed from the costs themselves (e.g. `--budget` of a printed C_1) is feasible.
REL_TOL = 1e-9

_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_SI_DESCENDING = [("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3), ("", 1.0)]
_SECONDS_DESCENDING = [("", 1.0), ("m", 1e-3), ("u", 1e-6), ("n", 1e-9)]
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_AMOUNT_RE = re.compile(rf"^({_NUMBER})\s*([A-Za-z]?)\s*(MACs?|macs?)?$")
_DURATION_RE = re.compile(
    r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)

_EXAMPLES = {
    "mean": "--budget 1.2G, --budget 850M, --budget 3.1e9 (mean Multiply-Adds per image)",
    "total": "--budget-total 3.5P, --budget-total 800T (Multiply-Adds for the whole dataset)",
    "time": "--budget-time 2h, --budget-time 90m, --budget-time 45s, --budget-time 1h30m",
}


# ----------------------------------------------------------------------------- formatting


def _scale_for(reference: float, unit: str) -> tuple[str, float]:
    """The prefix (and its factor) that writes `reference` with 1 to 3 digits before the point."""
    table = _SECONDS_DESCENDING if unit == "s" else _SI_DESCENDING
    ref = abs(float(reference))
    if not math.isfinite(ref) or ref == 0.0:
        return table[-1] if unit != "s" else ("", 1.0)
    for prefix, factor in table:
        if ref >= factor:
            return prefix, factor
    return table[-1]


def format_amount(value: float, unit: str = "MACs", like: float | None = None, digits: int = 3) -> str:
    """`value` with a unit prefix, e.g. ``0.76 GMACs`` or ``12.5 ms``.

    `like` picks the prefix from another value, so that several numbers in one message share a
    scale (``0.4 GMACs is below 0.76 GMACs``).
    """
    prefix, factor = _scale_for(value if like is None else like, unit)
    if like is not None and value and not 1e-3 <= abs(value / factor) < 1e3:
        prefix, factor = _scale_for(value, unit)  # 31.2 ms reads better than 3.12e+04 us
    return f"{_number(value / factor, digits)} {prefix}{unit}"


def _number(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def _distinct(values: Sequence[float], factor: float) -> list[str]:
    """Scaled numbers with the fewest significant digits (>= 3) that keep unequal values apart."""
    for digits in range(3, 17):
        texts = [_number(v / factor, digits) for v in values]
        if all((a != b) or (va == vb) for (a, va), (b, vb) in _pairs(texts, values)):
            return texts
    return texts


def _pairs(texts: list[str], values: Sequence[float]):
    items = list(zip(texts, values, strict=True))
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            yield items[i], items[j]


def _suffixed(value: float, digits: int = 3) -> str:
    """An amount as the grammar writes it: ``3.5P``, ``760T``."""
    prefix, factor = _scale_for(value, "MACs")
    return f"{_number(value / factor, digits)}{prefix}"


def format_duration(seconds: float) -> str:
    """Seconds as ``1h30m``, ``45s`` or ``2.5s``: the form `--budget-time` accepts back."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{_number(seconds, 3)}s"
    total = int(round(seconds))
    parts = []
    for name, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{name}")
            total %= size
    return "".join(parts)


def out_of_range_message(target: float, costs: Any, unit: str = "MACs") -> str:
    """Why `target` is infeasible for per-step costs `costs`, naming the smallest and largest budget."""
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    low, high = float(c[0]), float(c[-1])
    prefix, factor = _scale_for(high, unit)
    t, lo, hi = _distinct([target, low, high], factor)
    u = f"{prefix}{unit}"
    limits = f"the smallest budget is {lo} {u}, the largest {hi} {u}"
    if target < low:
        return f"budget {t} {u} is below the glance-only cost {lo} {u} of this model; {limits}"
    return (
        f"budget {t} {u} is above the all-steps cost {hi} {u} of this model (every image runs "
        f"all {c.size} steps); {limits}"
    )


# ----------------------------------------------------------------------------- parsing


def parse_amount(text: str, what: str = "budget", examples: str = _EXAMPLES["mean"]) -> float:
    """A positive number of Multiply-Adds with an optional K/M/G/T/P suffix: ``1.2G`` -> 1.2e9."""
    raw = str(text).strip()
    match = _AMOUNT_RE.match(raw)
    if not match:
        raise ValueError(
            f"cannot read {what} {text!r}: expected a number with an optional suffix K, M, G, T "
            f"or P (Multiply-Adds), e.g. {examples}"
        )
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "k":
        suffix = "K"
    if suffix not in _SI:
        hint = f"; did you mean {match.group(1)}{suffix.upper()}?" if suffix.upper() in _SI else ""
        raise ValueError(
            f"cannot read {what} {text!r}: unknown suffix {suffix!r} (use K, M, G, T or P, upper "
            f"case: m would read as milli){hint}; e.g. {examples}"
        )
    value = number * _SI[suffix]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} {text!r} must be a positive finite amount, e.g. {examples}")
    return value


def parse_duration(text: str) -> float:
    """A wall-clock duration in seconds: ``2h``, ``90m``, ``45s``, ``1h30m``, ``1.5h``, ``1d2h``."""
    raw = re.sub(r"\s+", "", str(text)).lower()
    match = _DURATION_RE.match(raw)
    if not raw or not match or not any(match.groupdict().values()):
        hint = " (a unit is required)" if re.fullmatch(_NUMBER, raw or "x") else ""
        raise ValueError(
            f"cannot read time budget {text!r}{hint}: expected a duration with units d, h, m, s, "
            f"largest first, e.g. {_EXAMPLES['time']}"
        )
    seconds = sum(float(v) * _DURATION_UNITS[k] for k, v in match.groupdict().items() if v)
    if seconds <= 0:
        raise ValueError(f"time budget {text!r} must be positive, e.g. {_EXAMPLES['time']}")
    return seconds


@dataclasses.dataclass(frozen=True)
class ResolvedBudget:
    """A budget turned into a target mean cost per image, in the units of `costs`.

    `costs` are the cumulative per-step costs the solver must use with `target` (MACs for
    mean/total budgets, per-image seconds for a wall-clock budget). `requested` is the per-image
    budget before clamping; `clamped` is true when it exceeded the all-steps cost.
    """

    budget: Budget
    target: float
    requested: float
    costs: np.ndarray
    unit: str
    clamped: bool
    message: str


@dataclasses.dataclass(frozen=True)
class Budget:
    """A user's compute budget: `kind` is mean (MACs per image), total (MACs) or time (seconds)."""

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"budget kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"budget value must be positive and finite, got {self.value}")

    def __str__(self) -> str:
        if self.kind == "time":
            return f"--budget-time {format_duration(self.value)}"
        flag = "--budget" if self.kind == "mean" else "--budget-total"
        return f"{flag} {_suffixed(self.value, 4)}"

    def per_image(
        self,
        num_images: int | None = None,
        num_workers: int = 1,
    ) -> float:
        """The budget per image: MACs for mean/total budgets, seconds of one model replica for time."""
        if self.kind == "mean":
            return self.value
        if num_images is None or not (math.isfinite(num_images) and num_images > 0):
            raise ValueError(
                f"{self} needs the number of images the job will classify (got {num_images}); "
                "pass num_images, or give a mean budget per image with --budget"
            )
        if self.kind == "total":
            return self.value / num_images
        if not (math.isfinite(num_workers) and num_workers > 0):
            raise ValueError(f"{self} needs num_workers >= 1 model replicas, got {num_workers}")
        return self.value * num_workers / num_images

    def resolve(
        self,
        costs_macs: Any = None,
        *,
        step_seconds: Any = None,
        num_images: int | None = None,
        num_workers: int = 1,
    ) -> ResolvedBudget:
        """The solver's target mean cost per image, clamped to the all-steps cost.

        Mean/total budgets use `costs_macs` (cumulative MACs per exit step). A time budget uses
        `step_seconds` (cumulative seconds per image of each exit step, measured on the device at
        the job's batch size) and `num_workers` model replicas running in parallel; it counts
        model time only, so leave headroom for reading and writing.
        Raises ValueError when the budget is below the glance-only cost.
        """
        if self.kind == "time":
            if step_seconds is None:
                raise ValueError(
                    f"{self} needs per-step seconds measured on the device (step_seconds); "
                    "measure them at start-up, or give a budget in MACs with --budget"
                )
            costs, unit = step_seconds, "s"
        else:
            if costs_macs is None:
                raise ValueError(f"{self} needs the model's cumulative per-step MACs (costs_macs)")
            costs, unit = costs_macs, "MACs"
        c = as_costs(costs)
        requested = self.per_image(num_images, num_workers)
        low, high = float(c[0]), float(c[-1])
        context = self._context(requested, num_images, num_workers, unit, high)
        if requested < low and not math.isclose(requested, low, rel_tol=REL_TOL):
            limits = self._limits(c, num_images, num_workers)
            raise ValueError(context + out_of_range_message(requested, c, unit) + limits)
        target, clamped = min(max(requested, low), high), False
        if requested > high and not math.isclose(requested, high, rel_tol=REL_TOL):
            clamped = True
            subject = "that" if context else f"budget {format_amount(requested, unit, like=high)} per image"
            message = (
                f"{context}{subject} is above the all-steps cost {format_amount(high, unit)}: "
                f"every image runs all {c.size} steps"
            )
            logger.warning(message)
        else:
            message = (
                f"{context}target {format_amount(target, unit, like=high)} per image (glance-only "
                f"{format_amount(low, unit, like=high)}, all {c.size} steps {format_amount(high, unit)})"
            )
        return ResolvedBudget(self, float(target), float(requested), c, unit, clamped, message)

    def _context(self, per_image: float, num_images: int | None, num_workers: int, unit: str, like: float) -> str:
        if self.kind == "mean":
            return ""
        workers = f" with {num_workers} model replica(s)" if self.kind == "time" else ""
        return f"{self} over {num_images} images{workers} is {format_amount(per_image, unit, like=like)} per image; "

    def _limits(self, c: np.ndarray, num_images: int | None, num_workers: int) -> str:
        """The feasible range restated in the user's own kind of budget."""
        if self.kind == "mean":
            return ""
        scale = float(num_images) if self.kind == "total" else float(num_images) / num_workers
        low, high = c[0] * scale, c[-1] * scale
        if self.kind == "total":
            return f" (for {num_images} images: --budget-total {_suffixed(low)} to {_suffixed(high)})"
        return f" (--budget-time {format_duration(low)} to {format_duration(high)})"


def as_costs(costs: Any) -> np.ndarray:
    """Cumulative per-exit-step costs as float64, checked to be finite and strictly increasing."""
    if hasattr(costs, "detach"):
        costs = costs.detach().cpu().double().numpy()
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    if c.size == 0 or not np.all(np.isfinite(c)) or np.any(np.diff(c) <= 0):
        raise ValueError(
            f"per-step costs must be finite and strictly increasing (cumulative per exit step), got {c.tolist()}"
        )
    return c


def parse_budget(text: str, kind: BudgetKind = "mean") -> Budget:
    """Parse a budget as written after --budget (mean), --budget-total (total) or --budget-time (time)."""
    if kind == "time":
        return Budget("time", parse_duration(text))
    if kind not in KINDS:
        raise ValueError(f"budget kind {kind!r} is not one of {', '.join(KINDS)}")
    what = "budget" if kind == "mean" else "total budget"
    return Budget(kind, parse_amount(text, what, _EXAMPLES[kind]))
