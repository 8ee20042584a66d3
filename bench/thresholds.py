"""Budget solver speed: exit fractions + thresholds for 1,000,000 images x 5 steps, and the speed
ratio of the vectorised rule over the plain per-sample reference on 50,000 images (same run,
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

from gfpipe.budget import exit_fractions, simulate, thresholds, thresholds_reference  # noqa: E402

# Cumulative MACs per exit step of GFNet ResNet-50, patch 96, T = 5 (bench/results/costs.json).
COSTS = np.array([0.76115968e9, 1.568459776e9, 2.375759872e9, 3.183059968e9, 3.990360064e9])
TARGET = 1.5e9
GOALS = {"seconds_1m": "< 2", "speedup_vs_reference": ">= 100", "identical": True}


def confidences(n: int, steps: int, seed: int = 0) -> np.ndarray:
    """Max-softmax-like confidences (float32, as a model emits them): rising with the step."""
    rng = np.random.default_rng(seed)
    ease = rng.normal(0.0, 1.5, (n, 1))
    logits = ease + 0.7 * np.arange(steps) + rng.normal(0.0, 0.5, (n, steps))
    return (0.001 + 0.999 / (1.0 + np.exp(-logits))).astype(np.float32)


def solve(conf: np.ndarray) -> np.ndarray:
    return thresholds(conf, exit_fractions(COSTS, TARGET))


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

    big = confidences(1_000_000, COSTS.size)
    seconds_1m, eta_1m = timed(lambda: solve(big), args.repeats)
    sim = simulate(big, eta_1m, COSTS)
    print(f"N=1,000,000 T=5 target {TARGET / 1e9:.2f} GMACs: exit_fractions + thresholds "
          f"{seconds_1m:.3f} s (goal < 2 s); simulated mean {sim.mean_cost / 1e9:.4f} GMACs, "
          f"exits {sim.counts.tolist()}")

    small = confidences(50_000, COSTS.size, seed=1)
    q = exit_fractions(COSTS, TARGET)
    fast_s, fast = timed(lambda: thresholds(small, q), max(args.repeats, 20))
    ref_s, ref = timed(lambda: thresholds_reference(small, q), max(1, args.repeats // 2))
    identical = bool(np.array_equal(fast, np.array(ref)))
    speedup = ref_s / fast_s
    print(f"N=50,000: vectorised {fast_s * 1e3:.2f} ms, per-sample reference {ref_s * 1e3:.0f} ms: "
          f"{speedup:.0f}x (goal >= 100x), identical output: {identical}")

    figures = {
        "seconds_1m": seconds_1m,
        "speedup_vs_reference": speedup,
        "identical": identical,
        "seconds_50k_vectorised": fast_s,
        "seconds_50k_reference": ref_s,
        "target_gmacs": TARGET / 1e9,
        "simulated_mean_gmacs_1m": sim.mean_cost / 1e9,
        "exit_counts_1m": sim.counts.tolist(),
        "thresholds_1m": [float(x) if np.isfinite(x) else str(x) for x in eta_1m],  # JSON has no inf
    }
    path = write_results("thresholds", figures, GOALS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
