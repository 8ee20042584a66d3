"""Capacity planning (`gfpipe.capacity`, `gfpipe plan`): the arithmetic, the inverse, and the command.

Every test gives the step seconds (no timing here) and seeded calibration data, so each answer
is known exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gfpipe import capacity as cap
from gfpipe.budget.solver import exit_fractions, simulate, solve_thresholds
from tests.cli_helpers import gfpipe_cli, one_line_error_problems

COSTS = [1.0e9, 2.5e9, 4.0e9]
SECONDS = (0.001, 0.0022, 0.0035)  # cumulative seconds per image of exiting after step 1, 2, 3


@pytest.fixture(scope="module")
def calibration():
    """2000 calibration rows: exit scores rising with the step, predictions right more often later."""
    rng = np.random.default_rng(0)
    n = 2000
    scores = np.cumsum(rng.normal(0.6, 1.0, (n, 3)), axis=1).astype(np.float32)
    labels = rng.integers(0, 10, n)
    right = rng.random((n, 3)) < np.array([0.55, 0.7, 0.8])
    predictions = np.where(right, labels[:, None], (labels[:, None] + 1) % 10)
    return scores, predictions, labels


def cpu_node(cpus: float = 2.0) -> cap.Node:
    return cap.node_pool("cpu", cpus)


def speed(efficiency: float = 0.8) -> cap.Speed:
    return cap.Speed(device="cpu", step_seconds=SECONDS, engine_efficiency=efficiency)


NO_COSTS = cap.JobCosts(fixed_seconds=0.0, actor_seconds=0.0, pipeline_core_seconds=0.0)


def test_devices_needed_is_images_times_seconds_per_image_over_the_window():
    assert cap.devices_needed(1_000_000, 0.01, 3600.0) == math.ceil(1_000_000 * 0.01 / 3600.0) == 3
    assert cap.devices_needed(1_000_000, 0.01, 3600.0, fixed_seconds=600.0) == math.ceil(10_000 / 3000.0) == 4
    assert cap.devices_needed(720_000, 0.01, 3600.0) == 2  # exactly two windows of work: two devices, not three
    assert cap.devices_needed(1, 0.01, 3600.0) == 1
    with pytest.raises(ValueError, match="leaves no time"):
        cap.devices_needed(100, 0.01, 5.0, fixed_seconds=5.2)


def test_forward_plan_follows_the_throughput_model(calibration):
    scores, predictions, labels = calibration
    efficiency, window, images = 0.8, 8 * 3600.0, 50_000_000
    plan = cap.plan_budget(
        images=images, budget=2.2e9, costs=COSTS, scores=scores, speed=speed(efficiency), node=cpu_node(),
        job=NO_COSTS, window=window, predictions=predictions, labels=labels,
    )  # fmt: skip
    shares = np.asarray(plan.exits.shares)
    assert shares.sum() == pytest.approx(1.0)
    model = float(shares @ np.asarray(SECONDS))
    assert plan.rate.model_seconds == pytest.approx(model)
    seconds_per_image = model / efficiency  # one replica, no job costs, the model is the bound here
    assert plan.rate.bound == "model"
    assert plan.rate.per_device_images_per_s == pytest.approx(1.0 / seconds_per_image)
    assert plan.devices_needed == math.ceil(images * seconds_per_image / window)
    assert plan.device_hours == pytest.approx(images * seconds_per_image / 3600.0)
    assert plan.seconds <= window
    # the budget is a ceiling; the shadow images' C_T is counted in it
    assert plan.exits.mean_macs <= 2.2e9
    assert plan.exits.mean_macs == pytest.approx(float(shares @ np.asarray(COSTS)))
    assert shares[-1] >= plan.exits.shadow_share == cap.SHADOW_SHARE


def test_doubling_the_window_halves_the_devices(calibration):
    scores = calibration[0]
    common = {"images": 200_000_000, "budget": 2.0e9, "costs": COSTS, "scores": scores, "speed": speed()}
    one = cap.plan_budget(**common, node=cpu_node(), job=NO_COSTS, window=4 * 3600.0)
    two = cap.plan_budget(**common, node=cpu_node(), job=NO_COSTS, window=8 * 3600.0)
    assert one.devices_needed > 10
    assert two.devices_needed in (one.devices_needed // 2, one.devices_needed // 2 + 1)
    # fixed start-up seconds eat into the window, not into the per-image work
    job = dataclasses.replace(NO_COSTS, fixed_seconds=3600.0)
    slow = cap.plan_budget(**common, node=cpu_node(), job=job, window=8 * 3600.0)
    assert slow.rate == two.rate
    assert slow.devices_needed == math.ceil(200_000_000 / (two.rate.per_device_images_per_s * 7 * 3600.0))


def test_the_best_budget_round_trips_with_the_forward_plan(calibration):
    scores, predictions, labels = calibration
    job = cap.JobCosts(fixed_seconds=60.0, actor_seconds=0.0002, pipeline_core_seconds=0.0001, decode_seconds=0.0008)
    common = {"costs": COSTS, "scores": scores, "speed": speed(), "node": cpu_node(4), "job": job}
    images, devices, window = 40_000_000, 6, 6 * 3600.0
    best = cap.best_budget(images=images, devices=devices, window=window, **common)
    assert COSTS[0] < best.exits.budget < COSTS[-1]
    assert best.seconds <= window
    at = cap.plan_budget(images=images, budget=best.exits.budget, window=window, **common)
    assert at.devices_needed <= devices
    more = cap.plan_budget(images=images, budget=best.exits.budget * 1.01, window=window, **common)
    assert more.devices_needed > devices
    # more devices, or a longer window, afford a larger budget
    assert cap.best_budget(images=images, devices=devices + 2, window=window, **common).exits.budget > best.exits.budget
    # the accuracy comes with it when the calibration has labels
    labelled = cap.best_budget(
        images=images, devices=devices, window=window, predictions=predictions, labels=labels, **common
    )
    assert labelled.exits.accuracy is not None and labelled.exits.budget == best.exits.budget


def test_the_best_budget_at_the_ends_of_the_range(calibration):
    scores = calibration[0]
    common = {"costs": COSTS, "scores": scores, "speed": speed(), "node": cpu_node(), "job": NO_COSTS}
    roomy = cap.best_budget(images=1000, devices=1, window=3600.0, **common)
    assert roomy.exits.budget == COSTS[-1] and roomy.exits.shares == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"even at the glance-only budget .* needs (\d+) CPU replica"):
        cap.best_budget(images=10**9, devices=1, window=3600.0, **common)


def test_a_probed_speed_is_asked_at_the_answer(calibration):
    scores = calibration[0]
    asked = []

    def probe(exits):
        asked.append(exits.budget)
        return speed(0.5 + 0.1 * exits.shares[-1])  # the engine does better when more images go on

    best = cap.best_budget(
        images=20_000_000, devices=2, window=8 * 3600.0, costs=COSTS, scores=scores, speed=probe,
        node=cpu_node(), job=NO_COSTS,
    )  # fmt: skip
    assert len(asked) == 2 and asked[0] == pytest.approx(0.5 * (COSTS[0] + COSTS[-1]))
    assert best.speed.engine_efficiency == pytest.approx(0.5 + 0.1 * best.exits.shares[-1], rel=0.05)


@pytest.mark.parametrize("budget", [0.5e9, 4.5e9])
def test_a_budget_outside_the_cost_range_is_the_solvers_error(calibration, budget):
    with pytest.raises(ValueError) as solver:
        exit_fractions(COSTS, budget)
    with pytest.raises(ValueError) as planner:
        cap.plan_budget(
            images=1000, budget=budget, costs=COSTS, scores=calibration[0], speed=speed(), node=cpu_node(),
            job=NO_COSTS, window=3600.0,
        )  # fmt: skip
    assert str(planner.value) == str(solver.value)
    assert "the smallest budget is 1 GMACs, the largest 4 GMACs" in str(planner.value)


def test_accuracy_is_what_simulate_gives_on_the_calibration_data(calibration):
    scores, predictions, labels = calibration
    plain = cap.expected_exits(COSTS, scores, 2.2e9, predictions, labels, shadow_share=0.0, margin=0.0)
    eta = solve_thresholds(COSTS, scores, 2.2e9).thresholds
    sim = simulate(scores, eta, COSTS, predictions, labels)
    assert plain.accuracy == sim.accuracy
    assert plain.mean_macs == pytest.approx(sim.mean_cost)
    assert plain.shares == pytest.approx(tuple(sim.fractions))
    # the job's controller: a shadow share runs all steps (and is right as often as step T), the rest
    # aims at what is left of the budget, a hair under it
    job = cap.expected_exits(COSTS, scores, 2.2e9, predictions, labels)
    s = job.shadow_share
    aim = (2.2e9 * (1 - cap.MARGIN) - s * COSTS[-1]) / (1 - s)
    rest = simulate(scores, solve_thresholds(COSTS, scores, aim).thresholds, COSTS, predictions, labels)
    last = float(np.mean(predictions[:, -1] == labels))
    assert job.accuracy == pytest.approx((1 - s) * rest.accuracy + s * last)
    assert cap.expected_exits(COSTS, scores, 2.2e9).accuracy is None


def test_the_shadow_share_is_capped_as_the_controller_caps_it():
    assert cap.feasible_shadow_share(COSTS, COSTS[0]) == 0.0
    assert cap.feasible_shadow_share(COSTS, COSTS[-1]) == 0.0
    assert cap.feasible_shadow_share(COSTS, 1.15e9) == pytest.approx(0.5 * 0.15e9 / 3.0e9)
    assert cap.feasible_shadow_share(COSTS, 3.0e9) == cap.SHADOW_SHARE


def test_the_slowest_side_bounds_the_node(calibration):
    scores = calibration[0]
    exits = cap.expected_exits(COSTS, scores, 2.0e9)
    node = cpu_node(8)  # as the classify job sizes 8 CPUs: 2 replicas of 2 CPUs (2 threads), 4 read tasks
    assert (node.replicas, node.cpus_per_replica, node.threads, node.read_tasks) == (2, 2.0, 2, 4)
    a = exits.seconds_per_image(SECONDS) / 0.8 + 0.0002
    fast_decode = cap.JobCosts(actor_seconds=0.0002, pipeline_core_seconds=0.0001, decode_seconds=0.0001)
    rate = cap.steady_rate(exits, speed(), node, fast_decode)
    assert rate.bound == "model" and rate.node_images_per_s == pytest.approx(2 / a)
    assert rate.bounds["reading"] == pytest.approx(4 / 0.0001)
    assert rate.bounds["cores"] == pytest.approx(8 / (2 * a + 0.0001 + 0.0001))
    assert rate.per_device_images_per_s == pytest.approx(1 / a)
    slow_decode = dataclasses.replace(fast_decode, decode_seconds=0.01)
    assert cap.steady_rate(exits, speed(), node, slow_decode).bound == "reading"
    busy = cap.JobCosts(actor_seconds=0.0002, pipeline_core_seconds=0.01, decode_seconds=0.0005)
    assert cap.steady_rate(exits, speed(), node, busy).bound == "cores"
    # GPUs: a replica keeps one core busy; replicas sharing a GPU overlap their host work, not the kernels
    gpu = cap.node_pool("cuda", 8, 1)
    assert (gpu.replicas, gpu.devices, gpu.batch_size, gpu.batches_per_call) == (1, 1, 256, 32)
    assert "gpu" not in cap.steady_rate(exits, speed(), gpu, fast_decode).bounds
    shared = cap.node_pool("cuda", 16, 2, replicas_per_gpu=3)
    assert (shared.replicas, shared.devices) == (6, 2)
    rate = cap.steady_rate(exits, speed(), shared, cap.JobCosts(actor_seconds=0.0, pipeline_core_seconds=0.0))
    m = exits.seconds_per_image(SECONDS)
    assert rate.bounds["gpu"] == pytest.approx(2 / m) and rate.bounds["model"] == pytest.approx(6 / (m / 0.8))
    assert rate.bound == "gpu" and rate.per_device_images_per_s == pytest.approx(1 / m)


def test_the_node_is_sized_as_the_classify_job_sizes_it():
    from gfpipe.budget.grammar import Budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import _batch_size, _batches_per_call, pool_shape

    for device, cpus, gpus, share in (("cpu", 2, 0, 1), ("cpu", 16, 0, 1), ("cuda", 12, 2, 1), ("cuda", 12, 2, 2)):
        node = cap.node_pool(device, cpus, gpus, replicas_per_gpu=share)
        config = ClassifyConfig(
            input="-", output="-", budget=Budget("mean", 1.0), device=device, replicas_per_gpu=share
        )
        shape = pool_shape(config, {"CPU": cpus, "GPU": gpus}, [cpus])
        assert (node.replicas, node.threads, node.read_tasks) == (shape.replicas, shape.threads, shape.read_tasks)
        batches = (_batch_size(config, shape), _batches_per_call(config, shape))
        assert (node.batch_size, node.batches_per_call) == batches


def test_an_all_steps_rate_splits_by_macs():
    seconds = cap.step_seconds_from_rate(COSTS, 400.0)
    assert seconds == pytest.approx((0.25 / 400, 0.625 / 400, 1 / 400))
    with pytest.raises(ValueError, match="increasing"):
        cap.Speed(device="cpu", step_seconds=(0.002, 0.001, 0.003), engine_efficiency=0.9)


def test_the_table_says_when_the_calibration_has_no_labels(calibration):
    from gfpipe.commands.plan import plan_text

    plan = cap.plan_budget(
        images=10**7, budget=2.0e9, costs=COSTS, scores=calibration[0], speed=speed(), node=cpu_node(),
        job=NO_COSTS, window=8 * 3600.0,
    )  # fmt: skip
    text = "\n".join(plan_text(plan, "model.pt", "val", None))
    assert "accuracy" in text and "unknown: calibration data has no labels" in text
    assert f"{plan.devices_needed} CPU replica(s)" in text


# ----------------------------------------------------------------------------- the command

GIVEN = ["plan", "--checkpoint", "demo", "--step-seconds", "0.18ms,0.35ms,0.52ms", "--engine-efficiency", "0.7"]
GIVEN += ["--node-cpus", "2", "--decode-images-per-s", "3000"]


def test_gfpipe_plan_prints_the_table_and_json(tmp_path: Path):
    import concurrent.futures

    from gfpipe.checkpoint import load_checkpoint

    forward = GIVEN + ["--images", "10M", "--budget", "9M", "--window", "8h", "--json"]
    inverse = GIVEN + ["--images", "10M", "--devices", "1", "--window", "3h"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda a: gfpipe_cli(*a, cwd=tmp_path), (forward, inverse)))
    for result in done:
        assert result.returncode == 0, result.stderr
    plan = json.loads(done[0].stdout)
    table = done[0].stderr
    model = load_checkpoint("demo")
    card = model.card.calibration
    exits = cap.expected_exits(
        plan["step_macs"], card["scores"].numpy(), 9e6, card["predictions"].numpy(), card["labels"].numpy()
    )
    assert plan["accuracy"] == pytest.approx(exits.accuracy)
    assert plan["exit_shares"] == pytest.approx(list(exits.shares))
    a = exits.seconds_per_image([0.18e-3, 0.35e-3, 0.52e-3]) / 0.7 + cap.ACTOR_SECONDS
    assert plan["bound"] == "model" and plan["images_per_s_per_device"] == pytest.approx(1 / a)
    window = 8 * 3600
    assert plan["devices_needed"] == math.ceil(10_000_000 * a / (window - cap.FIXED_SECONDS))
    assert plan["expected_seconds"] == pytest.approx(cap.FIXED_SECONDS + 10_000_000 * a / plan["devices_needed"])
    for words in ("accuracy", f"{100 * exits.accuracy:.1f}%", "within 8h", "CPU-replica-hours", "bound by"):
        assert words in table, table
    text = done[1].stdout
    assert text.startswith("plan for demo (tiny, T 3, 10 classes) on 10,000,000 images"), text
    assert "best budget" in text and "the largest that finishes within 3h on 1 CPU replica(s)" in text
    assert "fits the window" in text and "NOT" not in text


@pytest.mark.slow
def test_gfpipe_plan_mistakes_are_one_line(tmp_path: Path):
    cases = [
        (GIVEN + ["--images", "10M", "--window", "8h"], "give --budget"),
        (GIVEN + ["--images", "10M", "--budget", "1M", "--window", "8h"], "is below the glance-only cost"),
        (GIVEN + ["--images", "10M", "--budget", "9M", "--window", "8"], "a unit is required"),
        (GIVEN + ["--images", "10M", "--budget", "9M", "--images-per-s", "100"], "not allowed with argument"),
        (["plan", "--images", "10M", "--budget", "9M", "--step-seconds", "1,2"], "has 2 values; this model has T = 3"),
        (["plan", "--images", "no/such/archive", "--budget", "9M", "--images-per-s", "100"], "no/such/archive"),
        (GIVEN + ["--images", "-5", "--budget", "9M"], "give a positive number of images"),
        (GIVEN + ["--images", "10M", "--budget", "9M", "--window", "0s"], "must be positive, e.g. 2h"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["plan", "--images", "10M", "--budget", "9M", "--device", "cuda"], "no GPU is visible here"))
    problems = one_line_error_problems(cases, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_planner_imports_no_ray():
    """gfpipe.capacity is library code: cluster shapes are arguments, Ray stays out (DESIGN.md layering)."""
    import subprocess
    import sys

    code = (
        "import sys; from gfpipe import capacity; capacity.node_pool('cpu', 4); "
        "import gfpipe.commands.plan; print('ray' in sys.modules); sys.exit('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
