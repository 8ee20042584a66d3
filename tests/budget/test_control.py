"""Online budget control on synthetic streams: no model, the engine's exit rule simulated in numpy.

An "easy" population is confident early, a "hard" one is not. Thresholds calibrated on one and
applied to the other miss the budget badly; the controller must land within 2% of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from gfpipe.budget import (
    BudgetController,
    BudgetReport,
    ObservationBuffer,
    exit_fractions,
    exit_steps,
    is_shadow,
    thresholds,
)

COSTS = np.array([0.76, 1.55, 2.36, 3.17, 3.99])  # GMACs per exit step, ResNet-50 p96 T5-like
T = COSTS.size
EASY, HARD = 1.0, -0.5  # mean "ease" of each population
TARGET = 2.0
STREAM = 30_000
BATCH = 64


def population(rng: np.random.Generator, n: int, ease: float) -> np.ndarray:
    """(n, T) max-softmax-like confidences in [0.1, 1]: rising with the step, higher when easy."""
    latent = rng.normal(ease, 1.0, (n, 1))
    logits = latent + 0.8 * np.arange(T) + rng.normal(0.0, 0.5, (n, T))
    return (0.1 + 0.9 / (1.0 + np.exp(-logits))).astype(np.float32)


def data(calibration_ease: float, stream_ease: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return population(rng, 5000, calibration_ease), population(rng, STREAM, stream_ease)


def uncontrolled_mean_cost(calibration: np.ndarray, stream: np.ndarray) -> float:
    eta = thresholds(calibration, exit_fractions(COSTS, TARGET))
    return float(COSTS[exit_steps(stream, eta) - 1].mean())


def run_stream(
    controller: BudgetController, stream: np.ndarray, actors: int = 1, sync_every: int = 1, first_key: int = 0
) -> float:
    """Feed the stream batch by batch, as engines would; returns the realized mean cost.

    With several actors, batches go round-robin to workers that keep their own copy of the
    thresholds and only send reports (and get new thresholds) every `sync_every` rounds.
    """
    buffers = [ObservationBuffer(T) for _ in range(actors)]
    local = [controller.thresholds for _ in range(actors)]
    images_before, spent_before, spent = controller.images, controller.spent, 0.0
    for i, start in enumerate(range(0, stream.shape[0], BATCH)):
        worker = i % actors
        conf = stream[start : start + BATCH]
        keys = [f"img-{j}" for j in range(first_key + start, first_key + start + conf.shape[0])]
        shadow = controller.shadow_mask(keys)
        steps = exit_steps(conf, local[worker])
        steps[shadow] = T  # shadow images run all T steps
        spent += float(COSTS[steps - 1].sum())
        if actors == 1:
            local[0] = controller.record(steps, conf[shadow])
            continue
        buffers[worker].record(steps, conf[shadow])
        if worker == actors - 1 and (i // actors) % sync_every == sync_every - 1:
            local = [controller.merge([b.drain() for b in buffers])] * actors
    controller.merge([b.drain() for b in buffers])
    assert controller.images - images_before == stream.shape[0]
    assert controller.spent - spent_before == pytest.approx(spent)
    return spent / stream.shape[0]


@pytest.mark.parametrize("calibration_ease, stream_ease", [(EASY, HARD), (HARD, EASY)])
def test_control_lands_on_target_where_calibration_misses(calibration_ease, stream_ease):
    calibration, stream = data(calibration_ease, stream_ease)
    without = uncontrolled_mean_cost(calibration, stream)
    assert abs(without / TARGET - 1) > 0.02  # the mismatch is real: +68% / -50% here
    controller = BudgetController(COSTS, TARGET, calibration, seed=0)
    realized = run_stream(controller, stream)
    assert abs(realized / TARGET - 1) < 0.02
    assert controller.shadow_images == pytest.approx(0.05 * STREAM, rel=0.1)


@pytest.mark.parametrize("calibration_ease, stream_ease", [(EASY, HARD), (HARD, EASY)])
def test_control_with_a_known_total_lands_on_short_jobs(calibration_ease, stream_ease):
    rng = np.random.default_rng(1)
    calibration, stream = population(rng, 5000, calibration_ease), population(rng, 5000, stream_ease)
    controller = BudgetController(COSTS, TARGET, calibration, total_images=5000)
    assert abs(run_stream(controller, stream) / TARGET - 1) < 0.02


def test_control_follows_drift_within_the_stream():
    rng = np.random.default_rng(2)
    calibration = population(rng, 5000, EASY)
    stream = np.concatenate([population(rng, STREAM // 2, HARD), population(rng, STREAM // 2, EASY)])
    controller = BudgetController(COSTS, TARGET, calibration)
    assert abs(run_stream(controller, stream) / TARGET - 1) < 0.02


@pytest.mark.parametrize("actors, sync_every", [(2, 4), (8, 8)])
def test_merged_reports_from_many_actors_land_as_well(actors, sync_every):
    calibration, stream = data(EASY, HARD, seed=3)
    single = run_stream(BudgetController(COSTS, TARGET, calibration), stream)
    merged = run_stream(BudgetController(COSTS, TARGET, calibration), stream, actors, sync_every)
    assert abs(merged / TARGET - 1) < 0.02
    assert abs(merged - single) / TARGET < 0.01


def test_reports_add_up():
    a = BudgetReport.of([1, 2, 5, 5], np.full((2, T), 0.5), steps=T)
    b = BudgetReport.of([3], steps=T)
    both = BudgetReport.combine([a, b])
    assert both.images == 5 and both.exits.tolist() == [1, 1, 1, 0, 2]
    assert both.shadow_confidences.shape == (2, T)
    with pytest.raises(ValueError, match="must be counted"):
        BudgetReport.of([1, 2], np.full((1, T), 0.5))
    with pytest.raises(ValueError, match=r"1\.\.5"):
        BudgetReport.of([0, 6], steps=T)


def test_shadow_choice_is_fixed_by_key_and_seed():
    keys = [f"img-{i}" for i in range(20_000)]
    one = BudgetController(COSTS, TARGET, np.random.default_rng(0).random((100, T)), seed=7)
    two = BudgetController(COSTS, TARGET, np.random.default_rng(1).random((100, T)), seed=7)
    assert np.array_equal(one.shadow_mask(keys), two.shadow_mask(keys))
    assert one.shadow_mask(keys).mean() == pytest.approx(0.05, abs=0.005)
    assert [is_shadow(k, 0.05, 7) for k in keys[:50]] == one.shadow_mask(keys[:50]).tolist()
    other_seed = np.array([is_shadow(k, 0.05, 8) for k in keys])
    assert not np.array_equal(one.shadow_mask(keys), other_seed)


def test_shadow_share_is_capped_near_the_glance_only_cost_and_off_at_the_limits():
    calibration = np.random.default_rng(0).random((100, T))
    near = BudgetController(COSTS, 0.85, calibration, shadow_share=0.05)
    assert near.shadow_share == pytest.approx(0.5 * (0.85 - 0.76) / (3.99 - 0.76))
    assert BudgetController(COSTS, 3.99, calibration).shadow_share == 0.0
    top = BudgetController(COSTS, 3.99, calibration)
    assert np.all(top.thresholds[:-1] == np.inf)
    bottom = BudgetController(COSTS, 0.76, calibration)
    assert bottom.shadow_share == 0.0
    with pytest.raises(ValueError, match="below the glance-only cost"):
        BudgetController(COSTS, 0.5, calibration)


def test_single_step_model_has_nothing_to_control():
    controller = BudgetController([1.0], 1.0, np.random.default_rng(0).random((10, 1)))
    assert controller.shadow_share == 0.0
    assert controller.record([1, 1, 1]).tolist() == [-np.inf]
    assert controller.mean_cost == 1.0


def test_state_dict_resumes_the_same_course():
    calibration, stream = data(HARD, EASY, seed=4)
    first = BudgetController(COSTS, TARGET, calibration)
    run_stream(first, stream[:10_000])
    resumed = BudgetController(COSTS, TARGET, calibration)
    resumed.load_state_dict(first.state_dict())
    assert resumed.images == first.images and np.array_equal(resumed.thresholds, first.thresholds)
    rest = stream[10_000:]
    assert run_stream(first, rest, first_key=10_000) == run_stream(resumed, rest, first_key=10_000)
    assert np.array_equal(resumed.thresholds, first.thresholds)
