"""Non-finite numbers in budgets, calibration scores and shadow rows: clear errors or dropped rows,
never a crash in the middle of a run (one image with NaN/Inf pixels must not end a job)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gfpipe.budget import Budget, BudgetController, BudgetReport, ObservationBuffer, parse_budget

COSTS = np.array([0.76, 1.55, 2.36, 3.17, 3.99])
T = COSTS.size


def scores(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 1.0, (n, 1)) + 0.8 * np.arange(T) + rng.normal(0.0, 0.5, (n, T))).astype(np.float32)


@pytest.mark.parametrize("target", [math.nan, math.inf, -math.inf])
def test_controller_refuses_a_non_finite_budget_as_such(target):
    with pytest.raises(ValueError, match="is not a finite number"):
        BudgetController(COSTS, target, scores(100))


def test_budgets_never_carry_non_finite_values():
    for text in ("nan", "inf", "1e999"):
        with pytest.raises(ValueError):
            parse_budget(text)
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="positive and finite"):
            Budget("mean", value)
    with pytest.raises(ValueError, match="finite and strictly increasing"):
        Budget("time", 3600.0).resolve(step_seconds=[0.005, math.nan], num_images=10)


def test_controller_drops_nan_calibration_rows_with_a_warning(caplog):
    calibration = scores(500)
    calibration[[0, 7], 1] = np.nan
    with caplog.at_level("WARNING", logger="gfpipe.budget.control"):
        controller = BudgetController(COSTS, 2.0, calibration)
    assert "dropping 2 calibration rows" in caplog.text
    finite = BudgetController(COSTS, 2.0, np.delete(calibration, [0, 7], 0))
    assert np.array_equal(controller.thresholds, finite.thresholds)
    with pytest.raises(ValueError, match="all 3 calibration rows have NaN scores"):
        BudgetController(COSTS, 2.0, np.full((3, T), np.nan))


def test_nan_shadow_rows_are_paid_for_but_kept_out_of_the_sample():
    rows = scores(4, seed=1)
    rows[1, 2] = np.nan
    report = BudgetReport.of([5, 5, 5, 5, 1], rows, steps=T)
    assert report.shadow_scores.shape == (3, T) and report.shadow_dropped == 1 and report.images == 5
    both = BudgetReport.combine([report, BudgetReport.of([5], rows[1:2], steps=T)])
    assert both.shadow_dropped == 2 and both.shadow_scores.shape == (3, T)

    controller = BudgetController(COSTS, 2.0, scores(500), shadow_share=0.1)
    controller.record([5, 5, 5, 5, 1], rows)
    assert controller.images == 5 and controller.spent == pytest.approx(4 * 3.99 + 0.76)
    assert controller.shadow_images == 4 and controller.state_dict()["shadow"].shape == (3, T)
    # A report built by hand (not through `of`) is cleaned on merge too, and re-solves still work.
    raw = BudgetReport(np.array([0, 0, 0, 0, 2]), np.full((2, T), np.nan, np.float32))
    controller.merge([raw])
    assert controller.shadow_images == 6 and controller.state_dict()["shadow"].shape == (3, T)
    stream = scores(3000, seed=2)
    buffer = ObservationBuffer(T)
    for start in range(0, 3000, 100):
        batch = stream[start : start + 100].copy()
        batch[::10, 3] = np.nan  # every tenth shadow row broken
        buffer.record(np.full(100, T), batch[:10])
        controller.merge([buffer.drain()])
        assert not np.isnan(controller.thresholds).any()
    assert controller.shadow_images == 6 + 300
    assert controller.state_dict()["shadow"].shape == (3 + 270, T)
    assert len(controller.history) > 3


def test_infinite_scores_are_legal_for_the_controller():
    """A one-class model (+inf everywhere) or images scoring -inf: solves keep working."""
    calibration = scores(400)
    calibration[:40] = np.inf
    calibration[40:50, 0] = -np.inf
    controller = BudgetController(COSTS, 2.0, calibration, shadow_share=0.2)
    stream = scores(2000, seed=3)
    stream[::7] = np.inf
    for start in range(0, 2000, 50):
        batch = stream[start : start + 50]
        controller.record(np.full(50, T), batch[:10])
        assert not np.isnan(controller.thresholds).any()
    certain = BudgetController(COSTS, 2.0, np.full((20, T), np.inf))
    assert not np.isnan(certain.thresholds).any()
