"""Budget -> exit fractions -> per-step thresholds, and the simulation of the early-exit rule.

The solver needs no labels. It ranks images by their EXIT SCORE at each step: the log-odds of
the top class (`gfpipe.budget.scores.exit_scores`), which orders images exactly like max-softmax
but never saturates at 1.0. Any strictly increasing function of max-softmax gives the same
exits (the functions below never look at the values, only at their order), but saturated
confidences tie and spoil the quotas; scores do not. Thresholds eta_t are in the same units as
the scores; eta_t = +inf lets nobody exit at step t (except images whose score is itself +inf,
which are certain), eta_t = -inf lets every image still in exit there.

Given cumulative per-exit-step costs C_1..C_T and a target mean cost B per image,
`exit_fractions` picks the exit distribution q_t proportional to r^(t-1) (r < 1 favours early
exits, r > 1 late ones; the paper's z (1-q)^(t-1) q is the r < 1 half) whose mean cost is B.
A threshold rule turns q into thresholds on calibration scores:

- `thresholds` (the default, cumulative rule): by step k, floor(N (q_1 + ... + q_k)) images
  should have left. The quota at k is that number minus the images that already left; the
  quota-th highest step-k score among the images still in is eta_k. A quota <= 0 lets nobody
  exit (eta_k = +inf); a quota that covers every image still in lets all of them, and any
  unseen image, exit (eta_k = -inf). Rounding never accumulates: the count is off by less than
  one image at every step, and ties only ever make more images leave early (cheaper).
- `thresholds_msdnet` (MSDNet/GFNet, the papers' rule, kept as the reference): quota
  floor(N q_k) per step among the images still in. Quotas are floored step by step and the
  leftovers go to later, dearer steps, so the calibration set itself overspends (+1.6% at 256
  images); ties that exit early can leave a later step short, which then exits nobody.

`solve_thresholds`, the entry point for a budget, searches the exit distribution so that the
cumulative rule, simulated on the calibration scores, spends the most it can without going over
the target: budgets are a ceiling. `simulate` applies thresholds to scores exactly as the
engine does: an image leaves after the first step t whose score is >= eta_t, and always after
step T.

Calibration rows with a NaN score (non-finite model outputs: NaN/Inf pixels, fp16 overflow)
are dropped with a logged warning, not refused: the calibration sample may be measured on the
archive itself, and one broken image must not end a nightly run (the engine turns the same
images into error rows). Only a calibration set with no usable row is an error. +inf and -inf
scores are legal (a one-class model, legacy saturated confidences).

All functions take numpy arrays or torch tensors and return numpy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gfpipe.budget.grammar import REL_TOL, as_costs, format_amount, out_of_range_message

logger = logging.getLogger(__name__)

_LOG_R_CAP = 4096.0  # |log r| beyond which q is one-hot to double precision for any T we use
_MAX_TRIALS = 200  # safety net for the search in solve_thresholds; it needs far fewer
_AIM_TOL = 1e-10  # the search stops when its bracket of aims is this narrow (share of C_T - C_1)


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A numpy view of an array-like or torch tensor (bf16/fp16 tensors are widened to fp32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _geometric(log_r: float, size: int) -> np.ndarray:
    """q_t proportional to r^(t-1), computed in log space so that no r overflows."""
    a = np.arange(size, dtype=np.float64) * log_r
    w = np.exp(a - a.max())
    return w / w.sum()


def _finite_target(target: Any, costs: np.ndarray, unit: str) -> float:
    """The target as a float; NaN and +-inf get their own error (not 'above the all-steps cost')."""
    value = float(target)
    if not math.isfinite(value):
        raise ValueError(
            f"budget {value} is not a finite number; give a mean cost per image between the "
            f"glance-only cost {format_amount(float(costs[0]), unit, like=float(costs[-1]))} and the all-steps cost "
            f"{format_amount(float(costs[-1]), unit)} of this model"
        )
    return value


def exit_fractions(costs: Any, target: float, unit: str = "MACs") -> np.ndarray:
    """Exit fractions q (length T, sum 1) with q_t ~ r^(t-1) and mean cost sum_t q_t C_t = target.

    `costs` are cumulative per-exit-step costs (strictly increasing), `target` the mean cost per
    image in the same units (`unit` only shapes the error message). The mean cost grows
    monotonically with r, so log r is found by a safeguarded Newton search. A target outside
    [C_1, C_T] is a ValueError naming both limits; a NaN or infinite target is a ValueError of
    its own.
    """
    c = as_costs(costs)
    target = _finite_target(target, c, unit)
    low, high = float(c[0]), float(c[-1])
    one_hot = np.zeros(c.size)
    if math.isclose(target, low, rel_tol=REL_TOL, abs_tol=0.0):
        one_hot[0] = 1.0
        return one_hot
    if math.isclose(target, high, rel_tol=REL_TOL, abs_tol=0.0):
        one_hot[-1] = 1.0
        return one_hot
    if not (low < target < high):
        raise ValueError(out_of_range_message(target, c, unit))
    return _geometric(_log_r_for(c.tolist(), target), c.size)


def _log_r_for(costs: list[float], target: float) -> float:
    """log r whose geometric exit distribution has mean cost `target` (C_1 < target < C_T).

    The mean cost rises with log r (its derivative is the covariance of step index and cost
    under q), so Newton's method, kept inside a shrinking bisection bracket, converges in a
    few steps; plain floats, since the solver calls this for every trial it makes.
    """
    lo, hi, x = -_LOG_R_CAP, _LOG_R_CAP, 0.0
    last = len(costs) - 1
    for _ in range(200):
        top = x * last if x > 0 else 0.0
        w = [math.exp(x * t - top) for t in range(last + 1)]
        total = math.fsum(w)
        mean = math.fsum(wt * ct for wt, ct in zip(w, costs, strict=True)) / total
        if mean < target:
            lo = x
        elif mean > target:
            hi = x
        else:
            return x
        slope = (
            math.fsum(t * wt * ct for t, (wt, ct) in enumerate(zip(w, costs, strict=True))) / total
            - (math.fsum(t * wt for t, wt in enumerate(w)) / total) * mean
        )
        step = x - (mean - target) / slope if slope > 0 else math.nan
        if not lo < step < hi:
            step = 0.5 * (lo + hi)
        if step == x or not lo < step < hi:
            break
        x = step
    return x


# ------------------------------------------------------------------------------ inputs


def _check_scores(scores: Any) -> np.ndarray:
    s = to_numpy(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be (N, T) with N, T >= 1, got shape {s.shape}")
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    return s


def _check_fractions(fractions: Any, steps: int) -> np.ndarray:
    q = to_numpy(fractions, np.float64).reshape(-1)
    if q.size != steps:
        raise ValueError(f"got {q.size} exit fractions for {steps} steps of scores")
    if not np.all(np.isfinite(q)) or np.any(q < 0) or not math.isclose(float(q.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"exit fractions must be >= 0 and sum to 1, got {q.tolist()}")
    return q


def _check_weights(weights: Any, n: int) -> np.ndarray:
    w = to_numpy(weights, np.float64).reshape(-1)
    if w.size != n or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum")
    return w


def _usable_rows(s: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Calibration scores without the rows that hold a NaN (see the module doc for why they are
    dropped, not refused), their weights, and how many rows were dropped."""
    if not np.isnan(s.min()):  # the fast path: min is NaN exactly when some score is
        return s, w, 0
    bad = np.isnan(s).any(axis=1)
    dropped = int(bad.sum())
    n = s.shape[0]
    if dropped == n or (w is not None and w[~bad].sum() <= 0):
        raise ValueError(
            f"all {n} calibration rows have NaN scores (or only zero-weight rows are finite): the "
            "model outputs of the calibration pass are not finite; check the calibration images "
            "(NaN/Inf pixels) and the model (fp16 overflow) before solving thresholds"
        )
    logger.warning(
        "dropping %d of %d calibration rows whose scores are NaN (non-finite model outputs: "
        "NaN/Inf pixels or overflow); thresholds are solved on the other %d",
        dropped,
        n,
        n - dropped,
    )
    keep = ~bad
    return s[keep], (None if w is None else w[keep]), dropped


# ------------------------------------------------------------------------------ threshold rules


def thresholds(scores: Any, fractions: Any, weights: Any = None) -> np.ndarray:
    """Per-step thresholds eta (length T, float64) by the cumulative rule (see the module doc).

    `scores` (N, T) are exit scores (log-odds of the top class; any strictly increasing function
    of max-softmax gives the same exits), `fractions` the exit distribution q. By step k,
    floor(N * (q_1 + ... + q_k)) images should have left: the quota at k is that minus the
    images that already left; eta_k is the quota-th highest step-k score among the images still
    in (ties at it exit too), +inf when the quota is <= 0, -inf when it covers every image still
    in (so unseen images below all calibration scores exit too). eta_T = -inf. No labels needed.

    With `weights` (N,), images count by weight: by step k a weight of W (q_1 + ... + q_k)
    should have left (W the total weight). Taking the images still in by descending step-k
    score (the lighter first among equal scores), eta_k is the score of the last one whose
    cumulative weight fits in what is left of that (ties at it exit too); +inf when none fits,
    -inf when all of them fit. Zero-weight images take no part. Unit weights give exactly the
    unweighted rule.
    """
    s = _check_scores(scores)
    q = _check_fractions(fractions, s.shape[1])
    w = None if weights is None else _check_weights(weights, s.shape[0])
    s, w, _ = _usable_rows(s, w)
    if w is None:
        return _cumulative(s, q)[0]
    return _WeightedRule(s, w)(q)[0]


def _exit_shares(q: np.ndarray) -> np.ndarray:
    """Cumulative planned share of images out by each step k < T."""
    return np.cumsum(q)[:-1]


def _planned_counts(n: int, q: np.ndarray) -> tuple[int, ...]:
    """floor(N * cumulative q) for the steps before T: all the cumulative rule reads of q."""
    return tuple(math.floor(n * share) for share in _exit_shares(q).tolist())


def _cumulative(s: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unweighted cumulative rule: thresholds and each image's exit step (1-based)."""
    return _cumulative_from_counts(s, _planned_counts(s.shape[0], q))


def _cumulative_from_counts(s: np.ndarray, planned: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    n, steps = s.shape
    eta = np.full(steps, np.inf)
    eta[-1] = -np.inf
    exit_at = np.full(n, steps, dtype=np.int64)
    by_step = np.ascontiguousarray(s.T)  # (T, N): one contiguous row per step
    alive = np.arange(n)
    for k in range(steps - 1):
        quota = planned[k] - (n - alive.size)
        if quota >= alive.size:  # covers every image still in (also when none is left)
            eta[k] = -np.inf
            exit_at[alive] = k + 1
            alive = alive[:0]
            continue
        values = by_step[k, alive]
        if quota > 0:
            pivot = values.size - quota
            eta[k] = np.partition(values, pivot)[pivot]
        leave = values >= eta[k]  # with eta = +inf only scores of +inf leave, as in the engine
        exit_at[alive[leave]] = k + 1
        alive = alive[~leave]
    return eta, exit_at


class _WeightedRule:
    """The weighted cumulative rule with each step's order sorted once, for repeated use.

    Images are taken by descending score, the lighter first among equal scores: that makes the
    threshold independent of the input order, and unit weights give the unweighted rule.
    """

    def __init__(self, s: np.ndarray, w: np.ndarray) -> None:
        self.s, self.w = s, w
        self.total = float(w.sum())
        light_first = np.argsort(w, kind="stable")
        self.order = [light_first[np.argsort(-s[light_first, k], kind="stable")] for k in range(s.shape[1] - 1)]

    def __call__(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, w = self.s, self.w
        n, steps = s.shape
        eta = np.full(steps, np.inf)
        eta[-1] = -np.inf
        exit_at = np.full(n, steps, dtype=np.int64)
        alive = w > 0
        gone = 0.0  # weight of the images that left
        for k, share in enumerate(_exit_shares(q).tolist()):
            room = self.total * share - gone
            order = self.order[k]
            order = order[alive[order]]  # images still in, by descending step-k score
            cum = np.cumsum(w[order])
            if share >= 1.0 or room >= (cum[-1] if cum.size else 0.0):  # all still in fit
                eta[k] = -np.inf
                exit_at[order] = k + 1
                alive[:] = False
                gone = self.total
                continue
            count = int(np.searchsorted(cum, room, side="right"))
            if count:
                eta[k] = s[order[count - 1], k]
            leave = order[s[order, k] >= eta[k]]
            exit_at[leave] = k + 1
            alive[leave] = False
            gone += float(w[leave].sum())
        return eta, exit_at


def thresholds_msdnet(scores: Any, fractions: Any) -> np.ndarray:
    """Per-step thresholds by the MSDNet/GFNet rule: a share q_k of all N images at each step k.

    For k = 1..T-1, among the images that have not exited yet, in descending order of step-k
    score, eta_k is the score of the floor(N q_k)-th of them; images with a score >= eta_k exit
    at k (ties can make more exit). floor(N q_k) == 0 gives eta_k = +inf (nobody exits); so do
    fewer images left than floor(N q_k). eta_T = -inf. Kept as the papers' reference: it
    overspends on its own calibration data (see the module doc); budgets use `solve_thresholds`.
    """
    s = _check_scores(scores)
    q = _check_fractions(fractions, s.shape[1])
    s, _, _ = _usable_rows(s, None)
    n, steps = s.shape
    eta = np.full(steps, np.inf)
    eta[-1] = -np.inf
    by_step = np.ascontiguousarray(s.T)  # (T, N): one contiguous row per step
    alive = np.arange(n)
    for k in range(steps - 1):
        quota = math.floor(n * q[k])
        if quota == 0 or quota > alive.size:
            continue  # no quota, or fewer left than the quota: nobody else exits at k
        values = by_step[k, alive]
        if quota == values.size:
            eta[k] = values.min()
            alive = alive[:0]
            continue
        pivot = values.size - quota
        eta[k] = np.partition(values, pivot)[pivot]
        alive = alive[values < eta[k]]
    return eta


def thresholds_reference(scores: Any, fractions: Any) -> list[float]:
    """The MSDNet/GFNet rule as a plain per-sample Python loop: the yardstick for `thresholds_msdnet`."""
    s = _check_scores(scores)
    q = _check_fractions(fractions, s.shape[1])
    s, _, _ = _usable_rows(s, None)
    rows = s.tolist()
    q = q.tolist()
    n, steps = len(rows), len(rows[0])
    exited = [False] * n
    eta = [math.inf] * steps
    eta[-1] = -math.inf
    for k in range(steps - 1):
        quota = math.floor(n * q[k])
        if quota == 0:
            continue
        waiting = [i for i in range(n) if not exited[i]]
        if len(waiting) < quota:
            continue
        waiting.sort(key=lambda i: rows[i][k], reverse=True)
        eta[k] = rows[waiting[quota - 1]][k]
        for i in waiting:
            if rows[i][k] >= eta[k]:
                exited[i] = True
    return eta


# ------------------------------------------------------------------------------ the budget solve


@dataclasses.dataclass(frozen=True)
class ThresholdSolution:
    """Thresholds that spend at most `target` on the calibration scores they were solved on.

    `thresholds` (T,) come from the cumulative rule for `fractions`, the exit distribution q
    whose planned mean cost is `aim` (then single thresholds may have been moved where ties
    left room); `mean_cost` is what `simulate` gives with them on the calibration rows
    (weighted when weights were given), <= `target`; `images` is the number of calibration rows
    used, after `dropped` rows with NaN scores.
    """

    thresholds: np.ndarray
    fractions: np.ndarray
    aim: float
    mean_cost: float
    target: float
    unit: str = "MACs"
    images: int = 0
    dropped: int = 0

    @property
    def ratio(self) -> float:
        """Realized over target mean cost on the calibration data (<= 1: the budget is a ceiling)."""
        return self.mean_cost / self.target


@dataclasses.dataclass(frozen=True)
class _Trial:
    aim: float
    q: np.ndarray
    eta: np.ndarray
    mean_cost: float


def solve_thresholds(
    costs: Any,
    scores: Any,
    target: float,
    weights: Any = None,
    unit: str = "MACs",
    rtol: float = 1e-6,
) -> ThresholdSolution:
    """Thresholds whose simulated mean cost on the calibration `scores` is as high as it can be
    without going over `target`: the solver's entry point for a budget (budgets are a ceiling).

    `costs` are cumulative per-exit-step costs, `scores` (N, T) per-step exit scores of
    calibration images (log-odds of the top class; any strictly increasing function of
    max-softmax works), `weights` (N,) optional image weights (the mean cost is then weighted).
    Solving the exit distribution for the target and applying a rule to it does not give the
    target back: quotas are whole images, and ties exit together. So this searches the aim (the
    planned mean cost handed to `exit_fractions`) against the real rule: it simulates the
    cumulative rule's thresholds on the calibration rows and keeps the highest-spending aim
    that stays <= target (a bracketing secant search: the realized cost rises with the aim, up
    to ties). It stops when the realized cost is within `rtol` of the target or the bracket of
    aims is narrower than 1e-10 of C_T - C_1. If ties left it further under, single thresholds
    are then moved to spend the rest (see `_Polish`). A target outside [C_1, C_T] is a
    ValueError naming both limits, a NaN or infinite one a ValueError of its own; at C_1 every
    image exits at step 1 (eta_1 = -inf, so unseen images below every calibration score too).
    """
    c = as_costs(costs)
    goal = _finite_target(target, c, unit)
    exit_fractions(c, goal, unit)  # the range check, with its message
    s = _check_scores(scores)
    if s.shape[1] != c.size:
        raise ValueError(f"scores have {s.shape[1]} steps, costs {c.size}")
    w = None if weights is None else _check_weights(weights, s.shape[0])
    s, w, dropped = _usable_rows(s, w)
    n = s.shape[0]

    if w is None:
        cache: dict[tuple[int, ...], tuple[np.ndarray, float]] = {}

        def rule(q: np.ndarray) -> tuple[np.ndarray, float]:
            planned = _planned_counts(n, q)  # all the rule reads of q: aims that agree share a run
            if planned not in cache:
                eta, exit_at = _cumulative_from_counts(s, planned)
                cache[planned] = (eta, float(c[exit_at - 1].mean()))
            return cache[planned]

    else:
        weighted = _WeightedRule(s, w)

        def rule(q: np.ndarray) -> tuple[np.ndarray, float]:
            eta, exit_at = weighted(q)
            return eta, _weighted_mean(c[exit_at - 1], w)

    best, over = _search(c, goal, unit, rule, rtol)
    eta, mean = best.eta, best.mean_cost
    if goal - mean > rtol * goal:
        eta, mean = _Polish(s, w, c, goal, rtol).best(best, over)
    return ThresholdSolution(eta, best.q, best.aim, mean, goal, unit, n, dropped)


class _Polish:
    """Single-threshold moves that spend what the search left below the goal.

    Ties make the realized cost jump as the aim moves (a group of equal scores exits together),
    so the best aim can land well under the target. Each image's path depends only on its own
    scores, so moving one eta_k changes the exits of exactly the images it passes, and the cost
    of every such move is known without simulating. From the best trial, raise single
    thresholds (hold back the lowest-scoring images that exited at k; each adds C_(its next
    exit) - C_k), greedily the move that adds the most without passing the goal, a few rounds.
    From the cheapest trial above the goal, first lower one threshold just enough to get under
    it (release the highest-scoring images that went on past k), then raise as before. The
    better of the two wins; both never pass the goal.
    """

    def __init__(self, s: np.ndarray, w: np.ndarray | None, c: np.ndarray, goal: float, rtol: float) -> None:
        self.s, self.w, self.c, self.goal, self.rtol = s, w, c, goal, rtol
        self.weight = np.ones(s.shape[0]) if w is None else w
        self.total = float(self.weight.sum())

    def mean_of(self, exit_at: np.ndarray) -> float:
        spent = self.c[exit_at - 1]
        return float(spent.mean()) if self.w is None else _weighted_mean(spent, self.w)

    def best(self, under: _Trial, over: _Trial | None) -> tuple[np.ndarray, float]:
        results = [self.raise_(under.eta.copy(), under.mean_cost)]
        if over is not None:
            lowered = self.lower(over.eta.copy())
            if lowered is not None:
                results.append(self.raise_(*lowered))
        return max(results, key=lambda r: r[1])

    def lower(self, eta: np.ndarray) -> tuple[np.ndarray, float] | None:
        """One threshold lowered so that the mean cost gets <= goal, spending the most it can."""
        s, c, steps = self.s, self.c, self.s.shape[1]
        exit_at = exit_steps(s, eta)
        mean = self.mean_of(exit_at)
        need = (mean - self.goal) * self.total * (1.0 + 1e-9)  # cost x weight to shed
        best = None
        for k in range(steps - 1):
            on = np.flatnonzero(exit_at > k + 1)  # reached step k and went on
            if not on.size:
                continue
            order = np.argsort(-s[on, k], kind="stable")
            values = s[on[order], k]
            shed = np.cumsum((c[exit_at[on[order]] - 1] - c[k]) * self.weight[on[order]])
            ends = np.flatnonzero(np.append(values[1:] != values[:-1], True))
            enough = ends[shed[ends] >= need]
            if not enough.size:
                continue
            for end in enough[:2]:  # the first that fits; the next if rounding says otherwise
                moved = exit_at.copy()
                moved[on[order[: end + 1]]] = k + 1
                new_mean = self.mean_of(moved)
                if new_mean <= self.goal:
                    if best is None or new_mean > best[2]:
                        best = (k, values[end], new_mean, moved)
                    break
        if best is None:
            return None
        k, value, new_mean, _ = best
        eta[k] = value
        return eta, new_mean

    def raise_(self, eta: np.ndarray, mean: float) -> tuple[np.ndarray, float]:
        """Raise single thresholds, greedily, while the mean cost stays <= goal."""
        s, c, steps = self.s, self.c, self.s.shape[1]
        exit_at = exit_steps(s, eta)
        for _ in range(2 * (steps - 1)):
            if self.goal - mean <= self.rtol * self.goal:
                break
            room = (self.goal - mean) * self.total * (1.0 - 1e-9)  # cost x weight still allowed
            best = None
            for k in range(steps - 1):
                out = np.flatnonzero(exit_at == k + 1)
                out = out[s[out, k] < np.inf]  # a score of +inf exits whatever eta_k is
                if not out.size:
                    continue
                later = s[out, k + 1 :] >= eta[k + 1 :]
                later[:, -1] = True
                then = k + 1 + later.argmax(axis=1)  # 0-based step each would exit at instead
                order = np.argsort(s[out, k], kind="stable")
                values = s[out[order], k]
                gain = np.cumsum((c[then[order]] - c[k]) * self.weight[out[order]])
                ends = np.flatnonzero(np.append(values[1:] != values[:-1], True))  # tie-group ends
                fits = ends[gain[ends] <= room]
                if not fits.size or gain[fits[-1]] <= 0 or (best is not None and gain[fits[-1]] <= best[0]):
                    continue
                last = fits[-1]
                above = values[last + 1] if last + 1 < values.size else np.inf
                best = (gain[last], k, out[order[: last + 1]], then[order[: last + 1]], above)
            if best is None:
                break
            _, k, held, then, above = best
            moved = exit_at.copy()
            moved[held] = then + 1
            new_mean = self.mean_of(moved)
            if not mean < new_mean <= self.goal:
                break
            eta[k], exit_at, mean = above, moved, new_mean
        return eta, mean


def _weighted_mean(values: np.ndarray, w: np.ndarray) -> float:
    return float((values * w).sum() / w.sum())  # not `@`: BLAS threads cost more than they save here


def _search(
    c: np.ndarray,
    goal: float,
    unit: str,
    rule: Callable[[np.ndarray], tuple[np.ndarray, float]],
    rtol: float,
) -> tuple[_Trial, _Trial | None]:
    """The highest-spending trial with mean cost <= goal over aims in [C_1, C_T] (see
    solve_thresholds), and the cheapest one found above the goal (None when there is none).

    Illinois regula falsi on realized - goal: the realized cost is close to the aim, so the
    secant lands near the answer in a few trials; halving the pull of a bracket end that holds
    too long, and bisection as the fallback, keep the bracket shrinking across the steps that
    whole images (and ties) make in the realized cost.
    """
    low, high = float(c[0]), float(c[-1])

    def trial(aim: float) -> _Trial:
        q = exit_fractions(c, aim, unit)
        eta, mean = rule(q)
        return _Trial(aim, q, eta, mean)

    hi = trial(high)
    if hi.mean_cost <= goal:  # the all-steps target, or scores of +inf that exit anyway
        return hi, None
    lo = trial(low)  # eta_1 = -inf: every image exits at step 1, cost C_1
    if math.isclose(goal, low, rel_tol=REL_TOL, abs_tol=0.0):
        return lo, None
    aim_tol = _AIM_TOL * (high - low)
    aim, side, stale = goal, 0, 0
    for _ in range(_MAX_TRIALS):
        t = trial(aim)
        moved = -1 if t.mean_cost <= goal else 1
        if moved < 0:
            lo = t
        else:
            hi = t
        stale = stale + 1 if moved == side else 1
        side = moved
        if goal - lo.mean_cost <= rtol * goal or hi.aim - lo.aim <= aim_tol:
            break
        f_lo, f_hi = lo.mean_cost - goal, hi.mean_cost - goal
        if stale >= 2:  # the same end moved again: halve the pull of the end that held
            if side < 0:
                f_hi *= 0.5 ** (stale - 1)
            else:
                f_lo *= 0.5 ** (stale - 1)
        aim = lo.aim + (hi.aim - lo.aim) * (-f_lo) / (f_hi - f_lo)
        if stale >= 4 or not lo.aim < aim < hi.aim:
            aim = 0.5 * (lo.aim + hi.aim)
    return lo, hi


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """What the early-exit rule does on a set of images.

    `exit_steps` (N,) counts from 1; `counts` (T,) images per exit step; `mean_cost` the mean of
    C at each image's exit step (weighted when weights were given); `accuracy` only when
    predictions and labels were given.
    """

    exit_steps: np.ndarray
    counts: np.ndarray
    mean_cost: float
    accuracy: float | None = None

    @property
    def fractions(self) -> np.ndarray:
        """The realized share of images exiting at each step."""
        return self.counts / max(int(self.counts.sum()), 1)


def exit_steps(scores: Any, thresholds: Any) -> np.ndarray:
    """Exit step (1-based) of each image: the first t with score >= eta_t, else T.

    A NaN score never passes a threshold (such an image is an error row in the engine).
    """
    conf = to_numpy(scores)
    eta = to_numpy(thresholds, np.float64).reshape(-1)
    if conf.ndim != 2 or conf.shape[1] != eta.size:
        raise ValueError(f"scores {conf.shape} do not match {eta.size} thresholds")
    leave = conf >= eta
    leave[:, -1] = True
    return leave.argmax(axis=1) + 1


def simulate(
    scores: Any,
    thresholds: Any,
    costs: Any,
    predictions: Any = None,
    labels: Any = None,
    weights: Any = None,
) -> SimulationResult:
    """Apply thresholds to per-step exit scores as the engine does: exits, mean cost, accuracy.

    `predictions` (N, T) are the predicted class per step and `labels` (N,) the true ones; both
    are needed for accuracy, neither for anything else. With `weights` (N,) the mean cost is
    weighted (as `solve_thresholds` reports it for weighted calibration rows); counts are not.
    """
    c = as_costs(costs)
    steps = exit_steps(scores, thresholds)
    if c.size != to_numpy(thresholds).size:
        raise ValueError(f"{c.size} costs do not match {to_numpy(thresholds).size} thresholds")
    counts = np.bincount(steps - 1, minlength=c.size)
    if weights is None:
        mean_cost = float(c[steps - 1].mean())
    else:
        mean_cost = _weighted_mean(c[steps - 1], _check_weights(weights, steps.size))
    accuracy = None
    if (predictions is None) != (labels is None):
        raise ValueError("accuracy needs both predictions (N, T) and labels (N,); got only one")
    if predictions is not None:
        pred = to_numpy(predictions)
        true = to_numpy(labels).reshape(-1)
        if pred.shape != (steps.size, c.size) or true.size != steps.size:
            raise ValueError(
                f"predictions must be {(steps.size, c.size)} and labels ({steps.size},), "
                f"got {pred.shape} and {true.shape}"
            )
        chosen = pred[np.arange(steps.size), steps - 1]
        accuracy = float((chosen == true).mean())
    return SimulationResult(steps, counts, mean_cost, accuracy)
