"""Online budget control: keep the realized mean cost per image on target while a job runs.

Thresholds solved on calibration data spend the budget only if tonight's images look like the
calibration images; an archive that is harder (or easier) silently over- (or under-) spends.
`BudgetController` corrects this without labels, by two mechanisms:

1. Shadow sample (feed-forward). A fixed share s of images, chosen by a hash of their key (so
   reruns and every actor agree, with no coordination), runs all T steps whatever its
   confidence. Their full confidence vectors are an unbiased sample of the live stream, which
   the controller uses to re-solve thresholds: the calibration set and the shadow sample are
   pooled, each calibration image weighted so that the calibration set counts as
   `prior_images**2 / (prior_images + m)` images when m shadow images have been seen. Early on
   the calibration data dominates; after a few hundred shadow images the live stream does.
   Only the most recent `window` shadow images are kept, so slow drift in the archive is
   followed. A shadow image costs C_T, and that is charged to the budget: the other images aim
   at (B_now - s C_T) / (1 - s), and s is capped at half of (B - C_1) / (C_T - C_1) so that this
   target stays feasible.
2. Spend feedback. The controller counts the cost actually spent (every image, shadow ones
   included) and aims the next images at B_now = B - (spent - B n) / H, i.e. the overspend so
   far is paid back over the next H images (H = `horizon`, or the images left when the job's
   total is known, so that the total lands on B n_total).
3. Model-error correction. At each solve the controller also predicts the mean cost its
   thresholds will give non-shadow images (on the pooled, weighted confidences). Over the next
   window it compares that with what those images really cost, and keeps a smoothed estimate
   of the difference (gain w / (w + `bias_memory`) for a window of w images), which it
   subtracts from the next aim. Without it, a persistent error of the estimate (the early
   calibration-dominated phase, drift faster than the shadow window, stale thresholds on
   remote workers) would leave a steady overspend of H times that error.

Solves come after 64, 128, 256, ... images, then every `resolve_every` images (more often
near a known end). Each solves q = exit_fractions(C, aim) for the non-shadow aim
clip((B_now - s C_T) / (1 - s) - bias, C_1, C_T), then eta = thresholds(pooled, q, weights).

Observations are summarised as a `BudgetReport` (images by number of steps run, plus the
shadow images' confidence rows), which adds up across workers: many actors each keep an
`ObservationBuffer` and send `drain()`ed reports to one coordinator that calls `merge` and
hands back thresholds. Costs enter only through step counts, so one controller serves MACs and
seconds budgets. Thresholds depend on the order in which images arrive: with control on, a
rerun in a different order (several actors) may exit some images at different steps.
Near the glance-only cost there is little room to pay back an early overspend, so the
controller needs more images to land there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Any, Iterable, Sequence

import numpy as np

from gfpipe.budget.grammar import REL_TOL, as_costs, format_amount
from gfpipe.budget.solver import exit_fractions, exit_steps, thresholds, to_numpy

logger = logging.getLogger(__name__)


def shadow_draw(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): the same in every process and rerun."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def is_shadow(key: str, share: float, seed: int = 0) -> bool:
    """Whether the image with this key runs all T steps as part of the shadow sample."""
    return share > 0 and shadow_draw(key, seed) < share


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """Observations from some images: mergeable by addition across batches and workers.

    `exits` (T,) counts images by the number of steps they ran (shadow images at T);
    `shadow_confidences` (m, T) are the max-softmax confidences of the shadow images.
    """

    exits: np.ndarray
    shadow_confidences: np.ndarray

    @property
    def images(self) -> int:
        return int(self.exits.sum())

    @staticmethod
    def empty(steps: int) -> "BudgetReport":
        return BudgetReport(np.zeros(steps, np.int64), np.zeros((0, steps), np.float32))

    @staticmethod
    def of(steps_run: Any, shadow_confidences: Any = None, steps: int | None = None) -> "BudgetReport":
        """A report of one batch: steps run per image (1-based) and the shadow images' rows."""
        run = to_numpy(steps_run).reshape(-1).astype(np.int64)
        if steps is None:
            if shadow_confidences is None:
                raise ValueError("BudgetReport.of needs `steps` when no shadow confidences are given")
            steps = to_numpy(shadow_confidences).shape[-1]
        if run.size and (run.min() < 1 or run.max() > steps):
            raise ValueError(f"steps run must lie in 1..{steps}, got {run.min()}..{run.max()}")
        exits = np.bincount(run - 1, minlength=steps).astype(np.int64)
        if shadow_confidences is None:
            shadow = np.zeros((0, steps), np.float32)
        else:
            shadow = to_numpy(shadow_confidences, np.float32).reshape(-1, steps)
        if shadow.shape[0] > exits[-1]:
            raise ValueError(
                f"{shadow.shape[0]} shadow rows but only {exits[-1]} images ran all {steps} steps; "
                "shadow images run all steps and must be counted in steps_run"
            )
        return BudgetReport(exits, shadow)

    @staticmethod
    def combine(reports: Iterable["BudgetReport"]) -> "BudgetReport":
        reports = list(reports)
        if not reports:
            raise ValueError("combine needs at least one report")
        return BudgetReport(
            np.sum([r.exits for r in reports], axis=0),
            np.concatenate([r.shadow_confidences for r in reports], axis=0),
        )


class ObservationBuffer:
    """Worker-side collector: record batches, then `drain()` one report for the coordinator."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._parts: list[BudgetReport] = []

    def record(self, steps_run: Any, shadow_confidences: Any = None) -> None:
        self._parts.append(BudgetReport.of(steps_run, shadow_confidences, self.steps))

    @property
    def images(self) -> int:
        return sum(p.images for p in self._parts)

    def drain(self) -> BudgetReport:
        report = BudgetReport.combine(self._parts) if self._parts else BudgetReport.empty(self.steps)
        self._parts = []
        return report


class BudgetController:
    """Holds the current thresholds and corrects them from live observations (see module doc).

    `costs` are cumulative per-step costs, `target` the mean cost per image to land on (same
    units), `calibration_confidences` (N, T) the max-softmax per step of calibration images.
    `total_images`, when known, lets the spend feedback aim at the exact end of the job.
    """

    def __init__(
        self,
        costs: Any,
        target: float,
        calibration_confidences: Any,
        *,
        shadow_share: float = 0.05,
        seed: int = 0,
        resolve_every: int = 1024,
        horizon: int = 4096,
        prior_images: int = 64,
        bias_memory: int = 1024,
        window: int = 16384,
        max_calibration: int = 20000,
        total_images: int | None = None,
        unit: str = "MACs",
    ) -> None:
        self.costs = as_costs(costs)
        self.steps = self.costs.size
        self.target = float(target)
        self.unit = unit
        exit_fractions(self.costs, self.target, unit)  # raises if the target is infeasible
        if not 0 <= shadow_share < 1:
            raise ValueError(f"shadow_share must be in [0, 1), got {shadow_share}")
        if min(resolve_every, horizon, prior_images, bias_memory, window) < 1:
            raise ValueError("resolve_every, horizon, prior_images, bias_memory and window must be >= 1")
        self.seed = seed
        self.resolve_every = resolve_every
        self.horizon = horizon
        self.prior_images = prior_images
        self.bias_memory = bias_memory
        self.window = window
        self.total_images = total_images
        self.shadow_share = self._feasible_share(shadow_share)
        calib = to_numpy(calibration_confidences, np.float32)
        if calib.ndim != 2 or calib.shape[1] != self.steps or calib.shape[0] == 0:
            raise ValueError(f"calibration confidences must be (N, {self.steps}), got {calib.shape}")
        if calib.shape[0] > max_calibration:
            pick = np.random.default_rng(seed).choice(calib.shape[0], max_calibration, replace=False)
            calib = calib[np.sort(pick)]
        self._calibration = calib
        self._shadow_parts: list[np.ndarray] = [np.zeros((0, self.steps), np.float32)]
        self._shadow_seen = 0
        self._exits = np.zeros(self.steps, np.int64)
        self._last = {"exits": self._exits.copy(), "shadow_seen": 0}  # counters at the last solve
        self._predicted = math.nan  # model's mean cost of non-shadow images under the thresholds
        self._bias = 0.0  # realized minus predicted non-shadow mean cost, smoothed
        self.history: list[dict[str, Any]] = []
        self._thresholds = self.resolve()

    # -------------------------------------------------------------- what the engine asks

    @property
    def thresholds(self) -> np.ndarray:
        """Current per-step thresholds eta (length T, eta_T = -inf)."""
        return self._thresholds.copy()

    def is_shadow(self, key: str) -> bool:
        """Whether this image runs all T steps for the shadow sample (fixed by key and seed)."""
        return is_shadow(key, self.shadow_share, self.seed)

    def shadow_mask(self, keys: Sequence[str]) -> np.ndarray:
        """`is_shadow` for a batch of keys, as a boolean array."""
        return np.fromiter((self.is_shadow(k) for k in keys), dtype=bool, count=len(keys))

    def record(self, steps_run: Any, shadow_confidences: Any = None) -> np.ndarray:
        """Account one batch (steps run per image, shadow images at T) and return the thresholds.

        `shadow_confidences` (m, T) are the confidence rows of this batch's shadow images.
        """
        return self.merge([BudgetReport.of(steps_run, shadow_confidences, self.steps)])

    def merge(self, reports: Iterable[BudgetReport]) -> np.ndarray:
        """Add reports (from this process or other workers); re-solve when enough images came in.

        Solves come quickly at first (after 64, 128, 256, ... images) and then every
        `resolve_every` images.
        """
        for report in reports:
            if report.exits.size != self.steps:
                raise ValueError(f"report has {report.exits.size} steps, controller {self.steps}")
            self._exits += report.exits
            self._add_shadow(report.shadow_confidences)
        if self.images - int(self._last["exits"].sum()) >= self._solve_period():
            self._thresholds = self.resolve()
        return self.thresholds

    def _solve_period(self) -> int:
        """Images between solves: short at the start (64, 128, 256, ...) and near a known end."""
        period = min(self.resolve_every, max(self.images // 2, 64))
        if self.total_images is not None:
            period = min(period, max((self.total_images - self.images) // 8, 64))
        return period

    # -------------------------------------------------------------- accounting

    @property
    def images(self) -> int:
        return int(self._exits.sum())

    @property
    def spent(self) -> float:
        """Cost spent so far, shadow images included, in the units of `costs`."""
        return float(self._exits @ self.costs)

    @property
    def mean_cost(self) -> float:
        return self.spent / max(self.images, 1)

    @property
    def shadow_images(self) -> int:
        return self._shadow_seen

    # -------------------------------------------------------------- solving

    def desired(self) -> float:
        """Mean cost the next non-shadow images should realize: budget - payback - shadow cost."""
        n = self.images
        horizon = float(self.horizon)
        if self.total_images is not None:
            horizon = float(min(horizon, max(self.total_images - n, 1)))
        aim = self.target - (self.spent - self.target * n) / horizon
        s = self.shadow_share
        return (aim - s * float(self.costs[-1])) / (1.0 - s)

    def resolve(self) -> np.ndarray:
        """Re-solve thresholds now from calibration + shadow confidences and the spend so far."""
        self._update_bias()
        desired = self.desired()
        aim = float(np.clip(desired - self._bias, self.costs[0], self.costs[-1]))
        q = exit_fractions(self.costs, aim, self.unit)
        prior = self.prior_images**2 / (self.prior_images + self._shadow_seen)
        shadow = self._shadow()
        pooled = np.concatenate([self._calibration, shadow], axis=0)
        weights = np.concatenate(
            [
                np.full(self._calibration.shape[0], prior / self._calibration.shape[0]),
                np.ones(shadow.shape[0]),
            ]
        )
        eta = thresholds(pooled, q, weights, fill_short_steps=True)
        spent = self.costs[exit_steps(pooled, eta) - 1]
        self._predicted = float(weights @ spent / weights.sum())
        self._last = {"exits": self._exits.copy(), "shadow_seen": self._shadow_seen}
        self.history.append(
            {
                "images": self.images,
                "spent": self.spent,
                "desired": desired,
                "bias": self._bias,
                "aim": aim,
                "thresholds": eta.tolist(),
            }
        )
        logger.debug(
            "budget control: %d images, mean %s (target %s), next images aim at %s, %d shadow",
            self.images,
            format_amount(self.mean_cost, self.unit),
            format_amount(self.target, self.unit),
            format_amount(aim, self.unit),
            self._shadow_seen,
        )
        return eta

    def _update_bias(self) -> None:
        """Compare the last window's realized non-shadow cost with what the model predicted."""
        window = self._exits - self._last["exits"]
        shadow = self._shadow_seen - self._last["shadow_seen"]
        plain = int(window.sum()) - shadow
        if plain <= 0 or math.isnan(self._predicted):
            return
        realized = (float(window @ self.costs) - shadow * float(self.costs[-1])) / plain
        gain = plain / (plain + self.bias_memory)
        self._bias += gain * (realized - self._predicted - self._bias)

    def _add_shadow(self, rows: np.ndarray) -> None:
        if rows.shape[0]:
            self._shadow_seen += rows.shape[0]
            self._shadow_parts.append(rows.astype(np.float32))

    def _shadow(self) -> np.ndarray:
        """The most recent `window` shadow rows, as one (m, T) array."""
        if len(self._shadow_parts) > 1:
            self._shadow_parts = [np.concatenate(self._shadow_parts, axis=0)[-self.window :]]
        return self._shadow_parts[0]

    def _feasible_share(self, share: float) -> float:
        low, high = float(self.costs[0]), float(self.costs[-1])
        if self.steps == 1 or math.isclose(self.target, low, rel_tol=REL_TOL) or math.isclose(
            self.target, high, rel_tol=REL_TOL
        ):
            return 0.0
        cap = 0.5 * (self.target - low) / (high - low)
        if share > cap:
            logger.warning(
                "shadow share %.3g leaves too little budget for the other images at target %s; using %.3g",
                share,
                format_amount(self.target, self.unit),
                cap,
            )
            return cap
        return share

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        """Counters, shadow sample, bias estimate and thresholds (numpy and plain values) to resume."""
        return {
            "exits": self._exits.copy(),
            "shadow": self._shadow().copy(),
            "shadow_seen": self._shadow_seen,
            "last_exits": self._last["exits"].copy(),
            "last_shadow_seen": self._last["shadow_seen"],
            "predicted": self._predicted,
            "bias": self._bias,
            "thresholds": self._thresholds.copy(),
            "shadow_share": self.shadow_share,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (same costs, target and steps)."""
        exits = np.asarray(state["exits"], np.int64)
        if exits.shape != (self.steps,):
            raise ValueError(f"state has {exits.size} steps, controller {self.steps}")
        self._exits = exits.copy()
        self._shadow_parts = [np.asarray(state["shadow"], np.float32).reshape(-1, self.steps).copy()]
        self._shadow_seen = int(state["shadow_seen"])
        self._last = {
            "exits": np.asarray(state["last_exits"], np.int64).copy(),
            "shadow_seen": int(state["last_shadow_seen"]),
        }
        self._predicted = float(state["predicted"])
        self._bias = float(state["bias"])
        self._thresholds = np.asarray(state["thresholds"], np.float64).copy()
        self.shadow_share = float(state["shadow_share"])
