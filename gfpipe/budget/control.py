"""Online budget control: keep the realized mean cost per image on target while a job runs.

Thresholds solved on calibration data spend the budget only if tonight's images look like the
calibration images; an archive that is harder (or easier) silently over- (or under-) spends.
`BudgetController` corrects this without labels. It ranks images by exit score (log-odds of the
top class, `gfpipe.budget.scores`), like the solver and the engine. Three mechanisms:

1. Shadow sample (feed-forward). A fixed share s of images, chosen by a hash of their key (so
   reruns and every actor agree, with no coordination), runs all T steps whatever its score.
   Their full score vectors are an unbiased sample of the live stream, which the controller
   uses to re-solve thresholds: the calibration set and the shadow sample are pooled, each
   calibration image weighted so that the calibration set counts as
   `prior_images**2 / (prior_images + m)` images when m shadow images have been seen. Early on
   the calibration data dominates; after a few hundred shadow images the live stream does.
   Only the most recent `window` shadow images are kept, so slow drift is followed. A shadow
   image costs C_T, and that is charged to the budget: the other images aim at
   (B_now - s C_T) / (1 - s), and s is capped at half of (B - C_1) / (C_T - C_1) so that this
   target stays feasible. Shadow rows that are not finite (NaN: a broken image) are dropped
   from the sample; their cost still counts.
2. Spend feedback. The controller counts the cost actually spent (every image, shadow ones
   included) and aims the next images at B_now = B' - (spent - B' n) / H, i.e. the overspend
   so far is paid back over the next H images. B' = B (1 - `margin`) sits a hair under the
   budget, so that the landing errs low: budgets are a ceiling. When the job's total is known
   (`total_images`), H is the number of images left, so the total lands on B' n_total. When it
   is not, H = `horizon` (or twice the images between solves, if that is more: thresholds stay
   in use that long, so a faster payback would overshoot): the job may end at any time, so
   every debt is paid back quickly. An engine reports an image only when it leaves, and holds
   the hard ones longest, so at a known end the images still in flight bring cost the
   controller has not seen (+1% to +4% on jobs of a few thousand images). When images are
   counted in as they enter (`admit`), those in flight are budgeted at the expected cost of an
   image still in an engine, and the payback is spread over the images not yet admitted plus
   those in flight at half weight (new thresholds reach their later steps).
3. Model-error correction. At each solve the controller predicts the mean cost its thresholds
   will give non-shadow images (on the pooled, weighted scores). Over the next images it
   compares that with what those images really cost, and keeps a smoothed estimate of the
   difference (gain w / (w + `bias_memory`) for w images), which it subtracts from the next
   aim. This is the controller's fast sensor: every image measures it, not only the shadow
   ones, so a change in the mix of the stream is corrected within a few hundred images,
   long before the shadow sample has caught up; without it, a persistent error of the estimate
   (the early calibration-dominated phase, a shift or drift faster than the shadow window,
   stale thresholds on remote workers) would leave a steady overspend of H times that error.

Solves come after 64, 128, 256, ... images, then every `resolve_every` images (and more often
near a known end). Each solves, on the pooled scores with their weights, the thresholds whose
weighted simulated cost is the largest one under the non-shadow aim
clip((B_now - s C_T) / (1 - s) - bias, C_1, C_T) (`solve_thresholds`, the solver's ceiling solve:
its prediction is what those thresholds spend on the pooled rows, not what the exit
distribution planned).

Observations are summarised as a `BudgetReport` (images by number of steps run, plus the
shadow images' score rows), which adds up across workers: many actors each keep an
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
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gfpipe.budget.grammar import REL_TOL, as_costs, format_amount
from gfpipe.budget.solver import exit_fractions, solve_thresholds, to_numpy

logger = logging.getLogger(__name__)

_SOLVE_RTOL = 1e-3  # the controller's noise is far above this; a looser solve is faster
# Near a known end, new thresholds still reach the images in flight (their later steps), about half
# as much as an image not admitted yet: counting them at this weight in the payback horizon keeps
# the last solves from swinging to all-exit or no-exit thresholds over a handful of images (which
# landed jobs of 3000 images 2% under their budget).
IN_FLIGHT_WEIGHT = 0.5


def shadow_draw(key: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): the same in every process and rerun."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def is_shadow(key: str, share: float, seed: int = 0) -> bool:
    """Whether the image with this key runs all T steps as part of the shadow sample."""
    return share > 0 and shadow_draw(key, seed) < share


def _finite_rows(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows without NaN scores (a broken image), and how many were dropped."""
    bad = np.isnan(rows).any(axis=1)
    return (rows[~bad], int(bad.sum())) if bad.any() else (rows, 0)


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    """Observations from some images: mergeable by addition across batches and workers.

    `exits` (T,) counts images by the number of steps they ran (shadow images at T);
    `shadow_scores` (m, T) are the exit scores of the shadow images (log-odds of the top class);
    `shadow_dropped` counts shadow images whose rows held a NaN score and were left out of the
    sample (their cost is in `exits`); `admitted` counts images that entered an engine (see
    `BudgetController.admit`), whether they have finished or not.
    """

    exits: np.ndarray
    shadow_scores: np.ndarray
    shadow_dropped: int = 0
    admitted: int = 0

    @property
    def images(self) -> int:
        return int(self.exits.sum())

    @staticmethod
    def empty(steps: int) -> BudgetReport:
        return BudgetReport(np.zeros(steps, np.int64), np.zeros((0, steps), np.float32))

    @staticmethod
    def of(steps_run: Any, shadow_scores: Any = None, steps: int | None = None) -> BudgetReport:
        """A report of one batch: steps run per image (1-based) and the shadow images' score rows.

        Rows with a NaN score are dropped from the sample (and counted in `shadow_dropped`):
        one broken image must not break a later re-solve.
        """
        run = to_numpy(steps_run).reshape(-1).astype(np.int64)
        if steps is None:
            if shadow_scores is None:
                raise ValueError("BudgetReport.of needs `steps` when no shadow scores are given")
            steps = to_numpy(shadow_scores).shape[-1]
        if run.size and (run.min() < 1 or run.max() > steps):
            raise ValueError(f"steps run must lie in 1..{steps}, got {run.min()}..{run.max()}")
        exits = np.bincount(run - 1, minlength=steps).astype(np.int64)
        if shadow_scores is None:
            shadow = np.zeros((0, steps), np.float32)
        else:
            shadow = to_numpy(shadow_scores, np.float32).reshape(-1, steps)
        if shadow.shape[0] > exits[-1]:
            raise ValueError(
                f"{shadow.shape[0]} shadow rows but only {exits[-1]} images ran all {steps} steps; "
                "shadow images run all steps and must be counted in steps_run"
            )
        shadow, dropped = _finite_rows(shadow)
        return BudgetReport(exits, shadow, dropped)

    @staticmethod
    def combine(reports: Iterable[BudgetReport]) -> BudgetReport:
        reports = list(reports)
        if not reports:
            raise ValueError("combine needs at least one report")
        return BudgetReport(
            np.sum([r.exits for r in reports], axis=0),
            np.concatenate([r.shadow_scores for r in reports], axis=0),
            sum(r.shadow_dropped for r in reports),
            sum(r.admitted for r in reports),
        )


class ObservationBuffer:
    """Worker-side collector: record batches, then `drain()` one report for the coordinator."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._parts: list[BudgetReport] = []
        self._admitted = 0

    def admit(self, count: int) -> None:
        """Count images that entered this worker's engine (see `BudgetController.admit`)."""
        self._admitted += int(count)

    def record(self, steps_run: Any, shadow_scores: Any = None) -> None:
        self._parts.append(BudgetReport.of(steps_run, shadow_scores, self.steps))

    @property
    def images(self) -> int:
        return sum(p.images for p in self._parts)

    def drain(self) -> BudgetReport:
        report = BudgetReport.combine(self._parts) if self._parts else BudgetReport.empty(self.steps)
        if self._admitted:
            report = dataclasses.replace(report, admitted=report.admitted + self._admitted)
        self._parts, self._admitted = [], 0
        return report


class BudgetController:
    """Holds the current thresholds and corrects them from live observations (see module doc).

    `costs` are cumulative per-step costs, `target` the mean cost per image not to exceed (same
    units), `calibration_scores` (N, T) the exit scores per step of calibration images (rows
    with a NaN are dropped with a warning). `total_images`, when known, lets the spend feedback
    aim at the exact end of the job: give it whenever the job knows it. `margin` is the share
    of the budget the controller aims under it, so that its landing errs low. The defaults
    (a solve every 256 images, payback over 1024, model error smoothed over 256) let a stream
    of a few thousand images whose mix changes halfway land within 1% even when its end is
    not known; slower settings (1024, 4096, 1024) missed such streams by up to 9%.
    """

    def __init__(
        self,
        costs: Any,
        target: float,
        calibration_scores: Any,
        *,
        shadow_share: float = 0.05,
        seed: int = 0,
        resolve_every: int = 256,
        horizon: int = 1024,
        prior_images: int = 64,
        bias_memory: int = 256,
        window: int = 16384,
        max_calibration: int = 20000,
        total_images: int | None = None,
        unit: str = "MACs",
        margin: float = 0.002,
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
        if not 0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}")
        if total_images is not None and total_images < 1:
            raise ValueError(f"total_images must be >= 1 when given, got {total_images}")
        self.seed = seed
        self.resolve_every = resolve_every
        self.horizon = horizon
        self.prior_images = prior_images
        self.bias_memory = bias_memory
        self.window = window
        self.total_images = total_images
        # At the all-steps cost there is nothing to err on: every image runs all T steps.
        self.margin = 0.0 if math.isclose(self.target, float(self.costs[-1]), rel_tol=REL_TOL) else margin
        self.shadow_share = self._feasible_share(shadow_share)
        calib = to_numpy(calibration_scores, np.float32)
        if calib.ndim != 2 or calib.shape[1] != self.steps or calib.shape[0] == 0:
            raise ValueError(f"calibration scores must be (N, {self.steps}), got {calib.shape}")
        calib, dropped = _finite_rows(calib)
        if dropped:
            if not calib.shape[0]:
                raise ValueError(
                    f"all {dropped} calibration rows have NaN scores: the model outputs of the "
                    "calibration pass are not finite; check its images and the model"
                )
            logger.warning(
                "dropping %d calibration rows whose scores are NaN (non-finite model outputs); %d left",
                dropped,
                calib.shape[0],
            )
        if calib.shape[0] > max_calibration:
            pick = np.random.default_rng(seed).choice(calib.shape[0], max_calibration, replace=False)
            calib = calib[np.sort(pick)]
        self._calibration = calib
        self._shadow_parts: list[np.ndarray] = [np.zeros((0, self.steps), np.float32)]
        self._shadow_seen = 0  # shadow rows in the sample so far (finite ones)
        self._shadow_dropped = 0  # shadow images left out of the sample (NaN scores)
        self._admitted = 0  # images that entered an engine (0 when nobody reports admissions)
        self._exits = np.zeros(self.steps, np.int64)
        self._last = self._counters()  # counters at the last solve
        self._predicted = math.nan  # model's mean cost of non-shadow images under the thresholds
        self._bias = 0.0  # realized minus predicted non-shadow mean cost, smoothed
        self.history: list[dict[str, Any]] = []
        self._thresholds = self.resolve()

    # -------------------------------------------------------------- what the engine asks

    @property
    def thresholds(self) -> np.ndarray:
        """Current per-step thresholds eta (length T, score units, eta_T = -inf)."""
        return self._thresholds.copy()

    def is_shadow(self, key: str) -> bool:
        """Whether this image runs all T steps for the shadow sample (fixed by key and seed)."""
        return is_shadow(key, self.shadow_share, self.seed)

    def shadow_mask(self, keys: Sequence[str]) -> np.ndarray:
        """`is_shadow` for a batch of keys, as a boolean array."""
        return np.fromiter((self.is_shadow(k) for k in keys), dtype=bool, count=len(keys))

    def admit(self, keys: Sequence[str]) -> np.ndarray:
        """Images enter the engine: count them as started and return their `shadow_mask`.

        An engine holds images between steps, and reports each one only when it leaves, so
        near a known end the images still in flight carry cost the controller has not seen
        (those in deep pools are the expensive ones). Knowing how many there are, it budgets
        for them (see `desired`) and lands on the target instead of above it. Workers that
        report through an `ObservationBuffer` call its `admit(count)` instead.
        """
        self._admitted += len(keys)
        return self.shadow_mask(keys)

    def record(self, steps_run: Any, shadow_scores: Any = None) -> np.ndarray:
        """Account one batch (steps run per image, shadow images at T) and return the thresholds.

        `shadow_scores` (m, T) are the exit-score rows of this batch's shadow images.
        """
        return self.merge([BudgetReport.of(steps_run, shadow_scores, self.steps)])

    def merge(self, reports: Iterable[BudgetReport]) -> np.ndarray:
        """Add reports (from this process or other workers); re-solve when enough images came in.

        Solves come quickly at first (after 64, 128, 256, ... images) and then every
        `resolve_every` images. Shadow rows with a NaN score are dropped, their cost kept.
        """
        for report in reports:
            if report.exits.size != self.steps:
                raise ValueError(f"report has {report.exits.size} steps, controller {self.steps}")
            self._exits += report.exits
            self._admitted += int(report.admitted)
            rows, dropped = _finite_rows(to_numpy(report.shadow_scores, np.float32).reshape(-1, self.steps))
            self._shadow_dropped += int(report.shadow_dropped) + dropped
            self._add_shadow(rows)
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
    def in_flight(self) -> int:
        """Images admitted but not reported yet (0 when nobody reports admissions)."""
        return max(self._admitted - self.images, 0)

    @property
    def shadow_images(self) -> int:
        """Shadow images seen so far (those whose rows were dropped for NaN scores included)."""
        return self._shadow_seen + self._shadow_dropped

    # -------------------------------------------------------------- solving

    def desired(self) -> float:
        """Mean cost the next non-shadow images should realize: budget - payback - shadow cost.

        The budget aimed at is target * (1 - margin); the payback horizon is the images left
        when the total is known (those in flight at `IN_FLIGHT_WEIGHT`), else `horizon`, or
        twice the images since the last solve.
        """
        n = self.images
        goal = self.target * (1.0 - self.margin)
        if self.total_images is not None:
            flying = min(self.in_flight, max(self.total_images - n, 0))
            spent = self.spent + flying * self._in_flight_cost()
            horizon = float(max(self.total_images - n - flying + IN_FLIGHT_WEIGHT * flying, 1))
            aim = goal - (spent - goal * (n + flying)) / horizon
        else:
            # Thresholds stay in use until the next solve, for about as many images as came in
            # since the last one (many workers that sync rarely): pay back no faster than that.
            horizon = float(max(self.horizon, 2 * (n - int(self._last["exits"].sum()))))
            aim = goal - (self.spent - goal * n) / horizon
        s = self.shadow_share
        return (aim - s * float(self.costs[-1])) / (1.0 - s)

    def _in_flight_cost(self) -> float:
        """Expected final cost of an image in flight, from the exits seen so far.

        An engine's step pools each hold about the same number of images (less than two
        batches), and the glance pool empties whenever a full input batch arrives; so an image
        in flight has run j = 1..T-1 steps about equally often, and one that has run j steps
        costs what the images that ran more than j steps cost on average. (Deep pools hold the
        expensive images: this is well above the mean cost per image.)
        """
        exits = self._exits.astype(np.float64)
        if exits.sum() == 0 or self.steps == 1:
            return float(self.costs[-1])
        tail_images = np.cumsum(exits[::-1])[::-1]  # [j]: images that ran more than j steps
        tail_cost = np.cumsum((exits * self.costs)[::-1])[::-1]
        after = np.where(tail_images > 0, tail_cost / np.maximum(tail_images, 1), self.costs[-1])
        return float(after[1:].mean())

    def resolve(self) -> np.ndarray:
        """Re-solve thresholds now from calibration + shadow scores and the spend so far."""
        self._update_bias()
        desired = self.desired()
        aim = float(np.clip(desired - self._bias, self.costs[0], self.costs[-1]))
        prior = self.prior_images**2 / (self.prior_images + self._shadow_seen)
        shadow = self._shadow()
        pooled = np.concatenate([self._calibration, shadow], axis=0)
        weights = np.concatenate(
            [
                np.full(self._calibration.shape[0], prior / self._calibration.shape[0]),
                np.ones(shadow.shape[0]),
            ]
        )
        solution = solve_thresholds(self.costs, pooled, aim, weights, self.unit, rtol=_SOLVE_RTOL)
        eta = solution.thresholds
        self._predicted = solution.mean_cost
        self._last = self._counters()
        self.history.append(
            {
                "images": self.images,
                "spent": self.spent,
                "desired": desired,
                "bias": self._bias,
                "aim": aim,
                "in_flight": self.in_flight,
                "predicted": self._predicted,
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

    def _counters(self) -> dict[str, Any]:
        return {"exits": self._exits.copy(), "shadow_images": self.shadow_images}

    def _update_bias(self) -> None:
        """Compare the last window's realized non-shadow cost with what the model predicted."""
        window = self._exits - self._last["exits"]
        shadow = self.shadow_images - self._last["shadow_images"]
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
        if (
            self.steps == 1
            or math.isclose(self.target, low, rel_tol=REL_TOL)
            or math.isclose(self.target, high, rel_tol=REL_TOL)
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
            "shadow_dropped": self._shadow_dropped,
            "admitted": self._admitted,
            "last_exits": self._last["exits"].copy(),
            "last_shadow_images": self._last["shadow_images"],
            "predicted": self._predicted,
            "bias": self._bias,
            "thresholds": self._thresholds.copy(),
            "shadow_share": self.shadow_share,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (same costs, target and steps); nothing is in flight."""
        exits = np.asarray(state["exits"], np.int64)
        if exits.shape != (self.steps,):
            raise ValueError(f"state has {exits.size} steps, controller {self.steps}")
        self._exits = exits.copy()
        self._shadow_parts = [np.asarray(state["shadow"], np.float32).reshape(-1, self.steps).copy()]
        self._shadow_seen = int(state["shadow_seen"])
        self._shadow_dropped = int(state.get("shadow_dropped", 0))
        # Images in flight when the state was saved do not finish in this run: a resumed job
        # admits them again. So nothing is in flight now.
        self._admitted = self.images
        self._last = {
            "exits": np.asarray(state["last_exits"], np.int64).copy(),
            "shadow_images": int(state.get("last_shadow_images", state.get("last_shadow_seen", 0))),
        }
        self._predicted = float(state["predicted"])
        self._bias = float(state["bias"])
        self._thresholds = np.asarray(state["thresholds"], np.float64).copy()
        self.shadow_share = float(state["shadow_share"])
