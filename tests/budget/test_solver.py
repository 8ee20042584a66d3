"""The budget solver against plain per-sample loops written here, on random and adversarial inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gfpipe.budget import exit_fractions, simulate, thresholds, thresholds_reference

COSTS = np.array([0.76e9, 1.55e9, 2.36e9, 3.17e9, 3.99e9])


# ------------------------------------------------------------------ plain loops (the yardstick)


def loop_thresholds(conf: np.ndarray, q: np.ndarray, fill_short_steps: bool = False) -> list[float]:
    """The MSDNet/GFNet rule, one image at a time: walk the step-k order, count who is still in.

    Fewer images left than the quota: nobody else exits (the rule), or all of them exit
    (`fill_short_steps`)."""
    n, steps = conf.shape
    out = [False] * n
    eta = [math.inf] * (steps - 1) + [-math.inf]
    for k in range(steps - 1):
        want = math.floor(n * float(q[k]))
        if want == 0:
            continue
        order = sorted(range(n), key=lambda i: -float(conf[i, k]))
        count, last = 0, None
        for i in order:
            if not out[i]:
                count += 1
                last = float(conf[i, k])
                if count == want:
                    break
        if count < want and not fill_short_steps:
            continue  # fewer than `want` left: nobody else exits at k
        eta[k] = -math.inf if last is None else last  # with fill_short_steps: all of them exit
        for i in range(n):
            if not out[i] and float(conf[i, k]) >= eta[k]:
                out[i] = True
    return eta


def loop_simulate(conf, eta, costs, pred=None, labels=None):
    n, steps = conf.shape
    exits, spent, correct = [], 0.0, 0
    for i in range(n):
        t = next((k for k in range(steps) if k == steps - 1 or conf[i, k] >= eta[k]), steps - 1)
        exits.append(t + 1)
        spent += costs[t]
        if pred is not None:
            correct += int(pred[i, t] == labels[i])
    return exits, spent / n, (correct / n if pred is not None else None)


def check_identical(conf: np.ndarray, q: np.ndarray) -> None:
    for fill in (False, True):
        fast = thresholds(conf, q, fill_short_steps=fill)
        assert fast.dtype == np.float64 and fast.shape == (conf.shape[1],)
        assert np.array_equal(fast, np.array(loop_thresholds(conf, q, fill)))
        assert np.array_equal(fast, np.array(thresholds_reference(conf, q, fill)))
        assert np.array_equal(fast, thresholds(conf, q, weights=np.ones(conf.shape[0]), fill_short_steps=fill))


# ------------------------------------------------------------------ exit_fractions


@pytest.mark.parametrize("target", [0.77e9, 1.0e9, 1.2e9, 2.375e9, 3.5e9, 3.98e9])
def test_exit_fractions_hit_the_target(target):
    q = exit_fractions(COSTS, target)
    assert q.shape == (5,) and np.all(q >= 0)
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert q @ COSTS == pytest.approx(target, rel=1e-9)
    ratios = q[1:] / q[:-1]
    assert np.allclose(ratios, ratios[0], rtol=1e-6)  # geometric: q_t ~ r^(t-1)


def test_exit_fractions_favour_early_exits_below_the_midpoint():
    assert exit_fractions(COSTS, 1.2e9)[0] > 0.5
    assert exit_fractions(COSTS, 3.6e9)[-1] > 0.5
    uniform = exit_fractions(COSTS, COSTS.mean())
    assert np.allclose(uniform, 0.2)  # r = 1


def test_exit_fractions_edges_are_one_hot():
    assert np.array_equal(exit_fractions(COSTS, COSTS[0]), [1, 0, 0, 0, 0])
    assert np.array_equal(exit_fractions(COSTS, COSTS[-1]), [0, 0, 0, 0, 1])
    assert np.array_equal(exit_fractions([2.0], 2.0), [1.0])
    near = exit_fractions(COSTS, COSTS[0] * (1 + 1e-12))
    assert near[0] == 1.0


def test_exit_fractions_reject_infeasible_targets_naming_both_limits():
    with pytest.raises(ValueError) as low:
        exit_fractions(COSTS, 0.4e9)
    assert str(low.value) == (
        "budget 0.4 GMACs is below the glance-only cost 0.76 GMACs of this model; "
        "the smallest budget is 0.76, the largest 3.99"
    )
    with pytest.raises(ValueError, match=r"above the all-steps cost 3.99 GMACs.*largest 3.99"):
        exit_fractions(COSTS, 5e9)
    with pytest.raises(ValueError, match="0.7599 GMACs is below the glance-only cost 0.76"):
        exit_fractions(COSTS, 0.7599e9)
    with pytest.raises(ValueError, match=r"budget 1 ms is below .* 2 ms"):
        exit_fractions([0.002, 0.005], 0.001, unit="s")
    with pytest.raises(ValueError, match="strictly increasing"):
        exit_fractions([1.0, 1.0, 2.0], 1.5)


def test_exit_fractions_accept_torch():
    q = exit_fractions(torch.tensor(COSTS), 1.5e9)
    assert isinstance(q, np.ndarray) and q @ COSTS == pytest.approx(1.5e9)


# ------------------------------------------------------------------ thresholds


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_match_the_loop_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n, steps = int(rng.integers(1, 400)), int(rng.integers(1, 7))
    conf = rng.random((n, steps)).astype(np.float32)
    q = rng.dirichlet(np.ones(steps))
    check_identical(conf, q)


@pytest.mark.parametrize("levels", [2, 3, 5])
def test_thresholds_match_the_loop_with_ties(levels):
    rng = np.random.default_rng(levels)
    conf = rng.integers(0, levels, (300, 4)) / levels
    for q in ([0.5, 0.2, 0.2, 0.1], [0.9, 0.05, 0.05, 0.0], [0.25, 0.25, 0.25, 0.25]):
        check_identical(conf, np.array(q))


def test_ties_can_exit_more_than_the_quota_and_leave_later_steps_empty():
    conf = np.array([[0.9, 0.1, 0.5]] * 4 + [[0.2, 0.3, 0.5]])
    q = np.array([0.2, 0.6, 0.2])  # 1 image at step 1, but four tie at 0.9
    eta = thresholds(conf, q)  # step 2 wants 3 but 1 is left: nobody exits there (the rule)
    assert eta[0] == pytest.approx(0.9) and eta[1] == np.inf
    assert thresholds(conf, q, fill_short_steps=True)[1] == 0.3
    check_identical(conf, q)
    allsame = np.full((5, 3), 0.7)
    eta = thresholds(allsame, q)  # all exit at step 1; nobody is left for step 2
    assert eta[0] == pytest.approx(0.7) and eta[1] == np.inf
    assert thresholds(allsame, q, fill_short_steps=True)[1] == -np.inf
    check_identical(allsame, q)


def test_quota_below_one_image_means_nobody_exits():
    conf = np.random.default_rng(1).random((9, 3))
    q = np.array([0.1, 0.05, 0.85])  # floor(0.9) = floor(0.45) = 0
    eta = thresholds(conf, q)
    assert eta[0] == np.inf and eta[1] == np.inf and eta[2] == -np.inf
    check_identical(conf, q)


def test_all_confident_and_none_confident():
    q = exit_fractions([1.0, 2.0, 3.0], 1.5)
    check_identical(np.ones((50, 3)), q)
    check_identical(np.zeros((50, 3)), q)
    check_identical(np.full((50, 3), 0.1) + np.arange(50)[:, None] * 1e-9, q)


def test_single_image_and_single_step():
    check_identical(np.array([[0.3, 0.6, 0.9]]), np.array([0.5, 0.3, 0.2]))
    check_identical(np.array([[0.3, 0.6, 0.9]]), np.array([1.0, 0.0, 0.0]))
    one_step = np.random.default_rng(0).random((20, 1))
    assert np.array_equal(thresholds(one_step, [1.0]), [-np.inf])
    check_identical(one_step, np.array([1.0]))


def test_thresholds_realize_the_fractions_without_ties():
    rng = np.random.default_rng(3)
    conf = rng.random((10_000, 5))
    q = exit_fractions(COSTS, 1.8e9)
    result = simulate(conf, thresholds(conf, q), COSTS)
    assert np.array_equal(result.counts[:-1], np.floor(10_000 * q[:-1]))
    assert result.mean_cost == pytest.approx(1.8e9, rel=1e-3)


def test_thresholds_accept_torch_and_reject_bad_inputs():
    conf = torch.rand(100, 3, generator=torch.Generator().manual_seed(0))
    q = torch.tensor([0.5, 0.3, 0.2])
    assert np.array_equal(thresholds(conf, q), thresholds(conf.numpy(), q.numpy()))
    assert np.array_equal(thresholds(conf.bfloat16(), q), thresholds(conf.bfloat16().float(), q))
    with pytest.raises(ValueError, match="sum to 1"):
        thresholds(conf, [0.5, 0.3, 0.3])
    with pytest.raises(ValueError, match="3 steps"):
        thresholds(conf, [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        thresholds(np.full((2, 3), np.nan), q)


def test_ties_that_leave_a_step_short():
    """Saturated confidences: 3 of 4 images tie at 1.0 at step 1, quota 1; step 2 wants 2 of 1 left."""
    conf = np.array([[1.0, 0.5, 0.1], [1.0, 0.6, 0.1], [1.0, 0.7, 0.1], [0.2, 0.9, 0.1]])
    q = np.array([0.25, 0.5, 0.25])
    rule = thresholds(conf, q)
    assert rule[0] == 1.0 and rule[1] == np.inf  # the rule: nobody else exits at step 2
    filled = thresholds(conf, q, fill_short_steps=True)
    assert filled[1] == 0.9  # filled: the one left exits at step 2
    check_identical(conf, q)


def test_weighted_thresholds_count_images_by_weight():
    conf = np.array([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.6, 0.0]])
    q = np.array([0.5, 0.5])
    assert thresholds(conf, q)[0] == 0.8
    assert thresholds(conf, q, weights=[2.0, 1.0, 1.0, 0.0])[0] == 0.9  # weight 2 fills the half


# ------------------------------------------------------------------ simulate


def test_simulate_matches_the_loop_with_accuracy():
    rng = np.random.default_rng(4)
    conf = rng.integers(0, 6, (500, 5)) / 5
    pred = rng.integers(0, 3, (500, 5))
    labels = rng.integers(0, 3, 500)
    eta = thresholds(conf, exit_fractions(COSTS, 2e9))
    result = simulate(conf, eta, COSTS, pred, labels)
    exits, mean_cost, accuracy = loop_simulate(conf, eta, COSTS, pred, labels)
    assert result.exit_steps.tolist() == exits
    assert result.mean_cost == pytest.approx(mean_cost, rel=1e-12)
    assert result.accuracy == accuracy
    assert result.counts.tolist() == np.bincount(np.array(exits) - 1, minlength=5).tolist()
    assert result.fractions.sum() == pytest.approx(1.0)


def test_simulate_always_exits_at_the_last_step_and_needs_both_labels_and_predictions():
    conf = np.zeros((3, 2))
    result = simulate(conf, [np.inf, np.inf], [1.0, 2.0])
    assert result.exit_steps.tolist() == [2, 2, 2] and result.accuracy is None
    assert result.mean_cost == 2.0
    with pytest.raises(ValueError, match="both"):
        simulate(conf, [0.5, -np.inf], [1.0, 2.0], predictions=np.zeros((3, 2)))
