"""Online budget control on synthetic streams: realized / target with and without control.

Uses the score populations of tests/budget/test_control.py (an "easy" population confident early,
a "hard" one not; ResNet-50-like costs; target 2.0 G):
  - 30k-image streams from the other population than the calibration, both ways;
  - 6,000-image streams whose mix shifts halfway (4 seeds x 2 directions x 3 calibrations),
    with the job's total unknown and known.
numpy only; takes seconds.

    .venv/bin/python bench/control_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "budget"), str(ROOT / "bench")]
from common import write_results  # noqa: E402
from test_control import COSTS, EASY, HARD, TARGET, data, population, run_stream, uncontrolled_mean_cost  # noqa: E402

from gfpipe.budget import BudgetController  # noqa: E402


def main() -> None:
    figures: dict = {}
    for name, (calibration_ease, stream_ease) in {"easy_to_hard": (EASY, HARD), "hard_to_easy": (HARD, EASY)}.items():
        calibration, stream = data(calibration_ease, stream_ease)
        without = uncontrolled_mean_cost(calibration, stream) / TARGET
        with_control = run_stream(BudgetController(COSTS, TARGET, calibration), stream) / TARGET
        figures[f"stream_30k_{name}"] = {"without": without, "with": with_control}
        print(f"30k images, {name}: without control {without:.4f}, with {with_control:.4f}")

    errors = []
    for seed in range(4):
        for first, second in ((HARD, EASY), (EASY, HARD)):
            for calibration_ease in (EASY, HARD, 0.25):
                rng = np.random.default_rng(100 + seed)
                calibration = population(rng, 5000, calibration_ease)
                stream = np.concatenate([population(rng, 3000, first), population(rng, 3000, second)])
                without = uncontrolled_mean_cost(calibration, stream) / TARGET - 1
                unknown = run_stream(BudgetController(COSTS, TARGET, calibration), stream) / TARGET - 1
                known = BudgetController(COSTS, TARGET, calibration, total_images=stream.shape[0])
                errors.append((without, unknown, run_stream(known, stream) / TARGET - 1))
    e = 100 * np.array(errors)
    for column, label in enumerate(("without control", "total unknown", "total known")):
        lo, hi = float(e[:, column].min()), float(e[:, column].max())
        figures[f"shift_6000_{label.replace(' ', '_')}_percent"] = [lo, hi]
        print(f"6,000 images, mix shifts halfway, {len(e)} runs, {label}: {lo:+.2f}% to {hi:+.2f}%")
    print(f"wrote {write_results('control', figures, {'with': 'within 2%, at most +1%'})}")


if __name__ == "__main__":
    main()
