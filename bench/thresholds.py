"""Budget solver: speed of the ceiling solve (`solve_thresholds`) for 1,000,000 images x 5 steps,
how close each rule lands to the target on its own calibration data (realized / target: the
papers' MSDNet/GFNet rule after exit_fractions, and the ceiling solve), and the speed ratio of
the vectorised MSDNet rule over its plain per-sample reference on 50,000 images (same run,
identical output required).

    PYTHONPATH=. python bench/thresholds.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from gfpipe.budget import (  # noqa: E402
    exit_fractions,
    simulate,
    solve_thresholds,
    thresholds_msdnet,
    thresholds_reference,
)

# Cumulative MACs per exit step of GFNet ResNet-50, patch 96, T = 5 (bench/results/costs.json).
COSTS = np.array([0.76115968e9, 1.568459776e9, 2.375759872e9, 3.183059968e9, 3.990360064e9])
TARGET = 1.5e9
SWEEP = np.linspace(COSTS[0] + 0.01e9, COSTS[-1] - 0.01e9, 9)  # targets over the whole range
GOALS = {
    "seconds_1m": "< 2",
    "ratio_solve_1m": "<= 1 and >= 0.995",
    "ratio_solve_max_256": "<= 1",
    "speedup_vs_reference": ">= 100",
    "identical": True,
}


def scores(n: int, steps: int, seed: int = 0) -> np.ndarray:
    """Exit scores (log-odds of the top class, float32 as a model emits them): rising with the step."""
    rng = np.random.default_rng(seed)
    ease = rng.normal(0.0, 1.5, (n, 1))
    return (ease + 0.7 * np.arange(steps) + rng.normal(0.0, 0.5, (n, steps))).astype(np.float32)


def msdnet(s: np.ndarray, target: float) -> np.ndarray:
    return thresholds_msdnet(s, exit_fractions(COSTS, target))


def ratio(s: np.ndarray, eta: np.ndarray, target: float) -> float:
    return simulate(s, eta, COSTS).mean_cost / target


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")

    big = scores(1_000_000, COSTS.size)
    seconds_1m, solution = timed(lambda: solve_thresholds(COSTS, big, TARGET), args.repeats)
    seconds_1m_msdnet, eta_msdnet = timed(lambda: msdnet(big, TARGET), args.repeats)
    sim = simulate(big, solution.thresholds, COSTS)
    ratio_solve_1m, ratio_msdnet_1m = sim.mean_cost / TARGET, ratio(big, eta_msdnet, TARGET)
    print(
        f"N=1,000,000 T=5 target {TARGET / 1e9:.2f} GMACs: solve_thresholds {seconds_1m:.3f} s (goal < 2 s; "
        f"exit_fractions + MSDNet rule {seconds_1m_msdnet:.3f} s); exits {sim.counts.tolist()}"
    )
    print(f"  realized / target on the calibration data: solve {ratio_solve_1m:.7f}, MSDNet rule {ratio_msdnet_1m:.7f}")

    sweep = {}
    for n in (256, 1000, 5000):
        s = scores(n, COSTS.size, seed=2)
        old = [ratio(s, msdnet(s, t), t) for t in SWEEP]
        new = [solve_thresholds(COSTS, s, t).ratio for t in SWEEP]
        sweep[n] = {"msdnet": (min(old), max(old)), "solve": (min(new), max(new))}
        print(
            f"N={n}: realized / target over {SWEEP.size} targets from {SWEEP[0] / 1e9:.2f} to "
            f"{SWEEP[-1] / 1e9:.2f} GMACs: MSDNet rule {min(old):.4f}..{max(old):.4f}, "
            f"solve {min(new):.4f}..{max(new):.4f}"
        )

    small = scores(50_000, COSTS.size, seed=1)
    q = exit_fractions(COSTS, TARGET)
    pairs, identical = [], True
    for _ in range(args.repeats + 2):  # interleaved: each reference run next to its fast runs
        fast_s, fast = timed(lambda: thresholds_msdnet(small, q), 10)
        ref_s, ref = timed(lambda: thresholds_reference(small, q), 1)
        identical &= bool(np.array_equal(fast, np.array(ref)))
        pairs.append((ref_s / fast_s, fast_s, ref_s))
    pairs.sort()
    speedup, fast_s, ref_s = pairs[len(pairs) // 2]
    print(
        f"N=50,000: vectorised MSDNet rule {fast_s * 1e3:.2f} ms, per-sample reference {ref_s * 1e3:.0f} ms: "
        f"{speedup:.0f}x (spread {pairs[0][0]:.0f}x..{pairs[-1][0]:.0f}x over {len(pairs)} pairs; "
        f"goal >= 100x), identical output: {identical}"
    )

    figures = {
        "seconds_1m": seconds_1m,
        "seconds_1m_msdnet": seconds_1m_msdnet,
        "ratio_solve_1m": ratio_solve_1m,
        "ratio_msdnet_1m": ratio_msdnet_1m,
        "ratio_solve_max_256": sweep[256]["solve"][1],
        "ratio_msdnet_max_256": sweep[256]["msdnet"][1],
        "ratio_sweep": {
            str(n): {rule: {"min": lo, "max": hi} for rule, (lo, hi) in rules.items()} for n, rules in sweep.items()
        },
        "sweep_targets_gmacs": (SWEEP / 1e9).tolist(),
        "speedup_vs_reference": speedup,
        "speedup_spread": [pairs[0][0], pairs[-1][0]],
        "identical": identical,
        "seconds_50k_vectorised": fast_s,
        "seconds_50k_reference": ref_s,
        "target_gmacs": TARGET / 1e9,
        "simulated_mean_gmacs_1m": sim.mean_cost / 1e9,
        "exit_counts_1m": sim.counts.tolist(),
        "thresholds_1m": [float(x) if np.isfinite(x) else str(x) for x in solution.thresholds],  # JSON has no inf
    }
    path = write_results("thresholds", figures, GOALS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
