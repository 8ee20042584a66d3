"""Online budget control on synthetic streams: no model, the engine's exit rule simulated in numpy.

An "easy" population is confident early, a "hard" one is not. Thresholds calibrated on one and
applied to the other miss the budget badly; the controller must land within 2% of it, and
never more than 1% above it (budgets are a ceiling). The populations' values are max-softmax-like;
any strictly increasing function of the exit score ranks images the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from gfpipe.budget import (
    BudgetController,
    BudgetReport,
    ObservationBuffer,
    exit_steps,
    is_shadow,
    solve_thresholds,
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
    eta = solve_thresholds(COSTS, calibration, TARGET).thresholds
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
    assert both.shadow_scores.shape == (2, T)
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
    assert bottom.thresholds[0] == -np.inf  # every image, seen or not, leaves after the glance
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


# ------------------------------------------------------------------ short streams whose mix shifts


def shifting(seed: int, n: int, first: float, second: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibration on an even mix of both populations; a stream of one, then the other."""
    rng = np.random.default_rng(seed)
    calibration = np.concatenate([population(rng, 2500, EASY), population(rng, 2500, HARD)])
    stream = np.concatenate([population(rng, n // 2, first), population(rng, n - n // 2, second)])
    return calibration, stream


@pytest.mark.parametrize("first, second", [(HARD, EASY), (EASY, HARD)])
def test_short_shifting_streams_with_a_known_total_land_just_under_the_budget(first, second):
    """The job knows its total: within 2% and under the budget (the controller errs low)."""
    for seed, n in ((0, 5000), (1, 6000), (2, 9000)):
        calibration, stream = shifting(seed, n, first, second)
        controller = BudgetController(COSTS, TARGET, calibration, total_images=n)
        error = run_stream(controller, stream) / TARGET - 1
        assert -0.02 < error < 0, (seed, n, error)


@pytest.mark.parametrize("first, second", [(HARD, EASY), (EASY, HARD)])
def test_short_shifting_streams_without_a_total_do_no_worse_than_no_control(first, second):
    """Calibrated on the mix, fixed thresholds overspend one half and underspend the other, and
    land near the budget by luck. The controller, not knowing when the job ends, must pay back
    every miss quickly: it lands within 1% (or no worse than no control), never 1% above."""
    for seed in range(3):
        calibration, stream = shifting(seed, 6000, first, second)
        without = uncontrolled_mean_cost(calibration, stream) / TARGET - 1
        error = run_stream(BudgetController(COSTS, TARGET, calibration), stream) / TARGET - 1
        assert abs(error) <= max(abs(without), 0.01) and error < 0.01, (seed, error, without)


def test_short_stream_without_a_total_lands_where_calibration_misses():
    rng = np.random.default_rng(5)
    calibration = population(rng, 5000, EASY)
    stream = np.concatenate([population(rng, 3000, HARD), population(rng, 3000, EASY)])
    assert uncontrolled_mean_cost(calibration, stream) / TARGET - 1 > 0.2
    assert abs(run_stream(BudgetController(COSTS, TARGET, calibration), stream) / TARGET - 1) < 0.02


def test_controller_predictions_come_from_the_ceiling_solve():
    """Each solve's prediction is what its thresholds spend on the pooled sample: <= the aim."""
    calibration, stream = data(EASY, HARD, seed=6)
    controller = BudgetController(COSTS, TARGET, calibration)
    run_stream(controller, stream[:5000])
    assert len(controller.history) > 10
    for solve in controller.history:
        assert solve["predicted"] <= solve["aim"] and solve["predicted"] > 0.99 * solve["aim"]


# ------------------------------------------------------------------ images in flight (engine-like pools)


def run_pools(controller: BudgetController, stream: np.ndarray, batch: int = 32, admit: bool = True) -> float:
    """The engine's scheduling in numpy: per-step pools, the deepest full pool first, a final
    flush from shallow to deep; an image is reported only when it leaves (hard ones last)."""
    pools: list[list[tuple[int, bool]]] = [[] for _ in range(T)]  # (row, shadow) that ran j steps
    spent = 0.0

    def step(j: int) -> None:
        nonlocal spent
        take, pools[j] = pools[j][:batch], pools[j][batch:]
        rows = np.array([i for i, _ in take])
        shadow = np.array([s for _, s in take])
        leave = np.ones(rows.size, bool) if j == T - 1 else (stream[rows, j] >= controller.thresholds[j]) & ~shadow
        spent += COSTS[j] * leave.sum()
        ran_all = leave & shadow
        controller.record(np.full(leave.sum(), j + 1), stream[rows[ran_all]] if ran_all.any() else None)
        if j < T - 1:
            pools[j + 1] += [t for t, out in zip(take, leave, strict=True) if not out]

    for start in range(0, stream.shape[0], batch):
        keys = [f"img-{i}" for i in range(start, min(start + batch, stream.shape[0]))]
        mask = controller.admit(keys) if admit else controller.shadow_mask(keys)
        pools[0] += list(zip(range(start, start + len(keys)), mask, strict=True))
        while full := [j for j in range(T) if len(pools[j]) >= batch]:
            step(full[-1])
    for j in range(T):
        while pools[j]:
            step(j)
    assert controller.images == stream.shape[0] and controller.in_flight == 0
    return spent / stream.shape[0]


@pytest.mark.parametrize("first, second", [(HARD, EASY), (EASY, HARD)])
def test_images_in_flight_are_budgeted_near_a_known_end(first, second):
    """An engine holds hard images longest: at the end those in flight cost far more than the
    mean and overshoot a low budget. Admitted as they enter, they are budgeted for."""
    target = 1.2
    calibration, stream = shifting(1, 5000, first, second)
    unseen = run_pools(BudgetController(COSTS, target, calibration, total_images=5000), stream, admit=False)
    assert unseen / target - 1 > 0.01  # the trouble is real
    controller = BudgetController(COSTS, target, calibration, total_images=5000)
    error = run_pools(controller, stream) / target - 1
    assert -0.02 < error < 0.01
    assert max(solve["in_flight"] for solve in controller.history) > 50


def test_admissions_add_up_across_workers_and_resume_with_nothing_in_flight():
    buffer = ObservationBuffer(T)
    buffer.admit(5)
    buffer.record([1, 2], None)
    report = buffer.drain()
    assert report.admitted == 5 and report.images == 2
    assert buffer.drain().admitted == 0
    both = BudgetReport.combine([report, BudgetReport.of([3], steps=T)])
    assert both.admitted == 5
    controller = BudgetController(COSTS, TARGET, np.random.default_rng(0).random((100, T)))
    assert controller.admit(["a", "b", "c"]).tolist() == controller.shadow_mask(["a", "b", "c"]).tolist()
    controller.merge([both])
    assert controller.in_flight == 5 + 3 - 3
    resumed = BudgetController(COSTS, TARGET, np.random.default_rng(0).random((100, T)))
    resumed.load_state_dict(controller.state_dict())
    assert resumed.in_flight == 0 and resumed.images == 3


@pytest.mark.parametrize("calibration_ease, stream_ease", [(EASY, HARD), (HARD, EASY)])
def test_jobs_of_a_few_thousand_images_land_under_the_ceiling_whatever_the_shadow_sample(calibration_ease, stream_ease):
    """A 3000-image job through engine-like pools, over 12 shadow samples. With nothing left to
    admit, a payback horizon of one image turned a projected miss of a few images' cost into
    all-exit (or no-exit) thresholds that the images in flight then took: such jobs landed up to
    1.8% over (and the classify job 2.1% under) depending on the sample. In-flight images count
    in the horizon, so every sample lands within 2% and never 1% over."""
    errors = []
    for seed in range(12):
        calibration, stream = data(calibration_ease, stream_ease, seed)
        controller = BudgetController(COSTS, TARGET, calibration, total_images=3000, seed=seed)
        errors.append(run_pools(controller, stream[:3000], batch=64) / TARGET - 1)
    assert min(errors) > -0.02 and max(errors) < 0.01, np.round(errors, 4)
