"""Budget -> exit fractions -> per-step thresholds, and the simulation of the early-exit rule.

The solver needs no labels. Given cumulative per-exit-step costs C_1..C_T and a target mean
cost B per image, `exit_fractions` picks the exit distribution q_t proportional to r^(t-1)
(r < 1 favours early exits, r > 1 late ones; the paper's z (1-q)^(t-1) q is the r < 1 half)
whose mean cost is B. `thresholds` then turns q into confidence thresholds eta_t on
calibration confidences with the MSDNet/GFNet rule, and `simulate` applies thresholds to
confidences exactly as the engine does: an image leaves after the first step t whose max-softmax
confidence is >= eta_t, and always after step T.

All functions take numpy arrays or torch tensors and return numpy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gfpipe.budget.grammar import REL_TOL, as_costs, out_of_range_message

_LOG_R_CAP = 4096.0  # |log r| beyond which q is one-hot to double precision for any T we use


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A numpy view of an array-like or torch tensor (bf16/fp16 tensors are widened to fp32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _mean_cost(log_r: float, costs: np.ndarray) -> float:
    return float(_geometric(log_r, costs.size) @ costs)


def _geometric(log_r: float, size: int) -> np.ndarray:
    """q_t proportional to r^(t-1), computed in log space so that no r overflows."""
    a = np.arange(size, dtype=np.float64) * log_r
    w = np.exp(a - a.max())
    return w / w.sum()


def exit_fractions(costs: Any, target: float, unit: str = "MACs") -> np.ndarray:
    """Exit fractions q (length T, sum 1) with q_t ~ r^(t-1) and mean cost sum_t q_t C_t = target.

    `costs` are cumulative per-exit-step costs (strictly increasing), `target` the mean cost per
    image in the same units (`unit` only shapes the error message). The mean cost grows
    monotonically with r, so r is found by bisection on log r. A target outside [C_1, C_T] is a
    ValueError naming both limits.
    """
    c = as_costs(costs)
    target = float(target)
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
    lo, hi = -1.0, 1.0
    while _mean_cost(lo, c) > target and lo > -_LOG_R_CAP:
        lo *= 2.0
    while _mean_cost(hi, c) < target and hi < _LOG_R_CAP:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _mean_cost(mid, c) < target:
            lo = mid
        else:
            hi = mid
    return _geometric(0.5 * (lo + hi), c.size)


def _check_inputs(confidences: Any, fractions: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = to_numpy(confidences)
    if conf.ndim != 2 or conf.shape[0] == 0 or conf.shape[1] == 0:
        raise ValueError(f"confidences must be (N, T) with N, T >= 1, got shape {conf.shape}")
    if conf.dtype.kind != "f":
        conf = conf.astype(np.float64)
    if np.isnan(conf).any():
        raise ValueError("confidences contain NaN; check the model outputs of the calibration pass")
    q = to_numpy(fractions, np.float64).reshape(-1)
    if q.size != conf.shape[1]:
        raise ValueError(f"got {q.size} exit fractions for {conf.shape[1]} steps of confidences")
    if np.any(q < 0) or not math.isclose(float(q.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"exit fractions must be >= 0 and sum to 1, got {q.tolist()}")
    return conf, q


def thresholds(confidences: Any, fractions: Any, weights: Any = None, fill_short_steps: bool = False) -> np.ndarray:
    """Per-step thresholds eta (length T, float64) that make a share q_k of images exit at step k.

    For k = 1..T-1, among the images that have not exited yet, in descending order of step-k
    confidence, eta_k is the confidence of the floor(N q_k)-th of them; images with confidence
    >= eta_k exit at k (ties can make more exit). floor(N q_k) == 0 gives eta_k = +inf (nobody
    exits). eta_T = -inf. No labels are needed.

    When ties at earlier steps leave fewer images than floor(N q_k), the rule (MSDNet/GFNet's)
    lets nobody else exit at k. `fill_short_steps=True` lets all of them exit at k instead, as
    the cumulative quota says: saturated confidences (many exact 1.0 ties, common for trained
    models) otherwise send the leftovers to step T and overspend. The online controller uses it.

    With `weights` (N,), images count by weight: eta_k is the lowest confidence of the largest
    top-confidence group whose weight is <= q_k times the total weight; the step is short when
    the quota has room for one more of the remaining images than there are (unit weights give
    exactly the unweighted rule).
    """
    conf, q = _check_inputs(confidences, fractions)
    n, steps = conf.shape
    if weights is not None:
        return _weighted_thresholds(conf, q, to_numpy(weights, np.float64).reshape(-1), fill_short_steps)
    eta = np.full(steps, np.inf)
    eta[-1] = -np.inf
    by_step = np.ascontiguousarray(conf.T)  # (T, N): one contiguous row per step
    alive = np.arange(n)
    for k in range(steps - 1):
        quota = math.floor(n * q[k])
        if quota == 0:
            continue
        if alive.size == 0:
            if fill_short_steps:
                eta[k] = -np.inf
            continue
        values = by_step[k, alive]
        if quota > values.size and not fill_short_steps:
            continue  # fewer left than the quota: nobody else exits at k
        if quota >= values.size:
            eta[k] = values.min()
            alive = alive[:0]
            continue
        pivot = values.size - quota
        eta[k] = np.partition(values, pivot)[pivot]
        alive = alive[values < eta[k]]
    return eta


def _weighted_thresholds(conf: np.ndarray, q: np.ndarray, w: np.ndarray, fill_short_steps: bool) -> np.ndarray:
    n, steps = conf.shape
    if w.size != n or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum")
    total = float(w.sum())
    eta = np.full(steps, np.inf)
    eta[-1] = -np.inf
    alive = np.flatnonzero(w > 0)
    for k in range(steps - 1):
        quota = total * q[k]
        if alive.size == 0:
            if quota > 0 and fill_short_steps:
                eta[k] = -np.inf
            continue
        values = conf[alive, k]
        order = np.argsort(-values, kind="stable")
        cum = np.cumsum(w[alive][order])
        count = int(np.searchsorted(cum, quota, side="right"))
        if count == 0:
            continue
        if count == alive.size and cum[-1] + w[alive].min() <= quota and not fill_short_steps:
            continue  # fewer left than the quota: nobody else exits at k
        eta[k] = values[order[count - 1]]
        alive = alive[values < eta[k]]
    return eta


def thresholds_reference(confidences: Any, fractions: Any, fill_short_steps: bool = False) -> list[float]:
    """The threshold rule as a plain per-sample Python loop: the yardstick for `thresholds`."""
    conf, q = _check_inputs(confidences, fractions)
    rows = conf.tolist()
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
        if len(waiting) < quota and not fill_short_steps:
            continue
        if not waiting:
            eta[k] = -math.inf
            continue
        waiting.sort(key=lambda i: rows[i][k], reverse=True)
        eta[k] = rows[waiting[min(quota, len(waiting)) - 1]][k]
        for i in waiting:
            if rows[i][k] >= eta[k]:
                exited[i] = True
    return eta


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """What the early-exit rule does on a set of images.

    `exit_steps` (N,) counts from 1; `counts` (T,) images per exit step; `mean_cost` the mean of
    C at each image's exit step; `accuracy` only when predictions and labels were given.
    """

    exit_steps: np.ndarray
    counts: np.ndarray
    mean_cost: float
    accuracy: float | None = None

    @property
    def fractions(self) -> np.ndarray:
        """The realized share of images exiting at each step."""
        return self.counts / max(int(self.counts.sum()), 1)


def exit_steps(confidences: Any, thresholds: Any) -> np.ndarray:
    """Exit step (1-based) of each image: the first t with confidence >= eta_t, else T."""
    conf = to_numpy(confidences)
    eta = to_numpy(thresholds, np.float64).reshape(-1)
    if conf.ndim != 2 or conf.shape[1] != eta.size:
        raise ValueError(f"confidences {conf.shape} do not match {eta.size} thresholds")
    leave = conf >= eta
    leave[:, -1] = True
    return leave.argmax(axis=1) + 1


def simulate(
    confidences: Any,
    thresholds: Any,
    costs: Any,
    predictions: Any = None,
    labels: Any = None,
) -> SimulationResult:
    """Apply thresholds to per-step confidences as the engine does: exits, mean cost, accuracy.

    `predictions` (N, T) are the predicted class per step and `labels` (N,) the true ones; both
    are needed for accuracy, neither for anything else.
    """
    c = as_costs(costs)
    steps = exit_steps(confidences, thresholds)
    if c.size != to_numpy(thresholds).size:
        raise ValueError(f"{c.size} costs do not match {to_numpy(thresholds).size} thresholds")
    counts = np.bincount(steps - 1, minlength=c.size)
    mean_cost = float(c[steps - 1].mean())
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
