"""The budget solver against plain per-sample loops written here, on random and adversarial inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gfpipe.budget import (
    exit_fractions,
    exit_steps,
    simulate,
    solve_thresholds,
    thresholds,
    thresholds_msdnet,
    thresholds_reference,
)

COSTS = np.array([0.76e9, 1.55e9, 2.36e9, 3.17e9, 3.99e9])


# ------------------------------------------------------------------ plain loops (the yardstick)


def loop_msdnet(conf: np.ndarray, q: np.ndarray) -> list[float]:
    """The MSDNet/GFNet rule, one image at a time: walk the step-k order, count who is still in.

    Fewer images left than the quota: nobody else exits."""
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
        if count < want:
            continue  # fewer than `want` left: nobody else exits at k
        eta[k] = last
        for i in range(n):
            if not out[i] and float(conf[i, k]) >= eta[k]:
                out[i] = True
    return eta


def loop_cumulative(conf: np.ndarray, q: np.ndarray, weights=None) -> list[float]:
    """The cumulative rule, one image at a time: by step k, N (q_1 + ... + q_k) images (or that
    share of the weight) should be out; take the best-scoring images still in (the lighter first
    among equal scores) until the next one would not fit; ties with the last one taken exit too."""
    n, steps = conf.shape
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    total = sum(w)
    out = [wi == 0 for wi in w]  # zero-weight images take no part
    gone = 0.0
    shares = list(itertools.accumulate(float(x) for x in q))
    eta = [math.inf] * (steps - 1) + [-math.inf]
    for k in range(steps - 1):
        waiting = [i for i in range(n) if not out[i]]
        if weights is None:
            room = math.floor(n * shares[k]) - gone
        else:
            room = total * shares[k] - gone
        if shares[k] >= 1 or room >= sum(w[i] for i in waiting):
            eta[k] = -math.inf
        else:
            waiting.sort(key=lambda i: (-float(conf[i, k]), w[i]))  # the lighter first among ties
            taken = 0.0
            for i in waiting:
                if taken + w[i] > room:
                    break
                taken += w[i]
                eta[k] = float(conf[i, k])
        for i in waiting:
            if float(conf[i, k]) >= eta[k]:
                out[i] = True
                gone += w[i]
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
    """Both rules, vectorised, equal their plain loops (and the shipped reference loop)."""
    msdnet = thresholds_msdnet(conf, q)
    assert msdnet.dtype == np.float64 and msdnet.shape == (conf.shape[1],)
    assert np.array_equal(msdnet, np.array(loop_msdnet(conf, q)))
    assert np.array_equal(msdnet, np.array(thresholds_reference(conf, q)))
    cumulative = thresholds(conf, q)
    assert cumulative.dtype == np.float64 and cumulative.shape == (conf.shape[1],)
    assert np.array_equal(cumulative, np.array(loop_cumulative(conf, q)))
    assert np.array_equal(cumulative, thresholds(conf, q, weights=np.ones(conf.shape[0])))


def scores_like(rng: np.random.Generator, n: int, steps: int = 5) -> np.ndarray:
    """Exit-score-like values (log-odds): an image's ease plus a rise with the step, plus noise."""
    return rng.normal(0.0, 1.5, (n, 1)) + 0.7 * np.arange(steps) + rng.normal(0.0, 0.5, (n, steps))


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
    assert str(low.value).startswith("budget 0.4 GMACs is below the glance-only cost 0.76 GMACs of this model; ")
    assert "smallest budget is 0.76" in str(low.value) and "largest 3.99" in str(low.value)
    with pytest.raises(ValueError, match=r"above the all-steps cost 3.99 GMACs.*largest 3.99"):
        exit_fractions(COSTS, 5e9)
    with pytest.raises(ValueError, match="0.7599 GMACs is below the glance-only cost 0.76"):
        exit_fractions(COSTS, 0.7599e9)
    with pytest.raises(ValueError, match=r"budget 1 ms is below .* 2 ms"):
        exit_fractions([0.002, 0.005], 0.001, unit="s")
    with pytest.raises(ValueError, match="strictly increasing"):
        exit_fractions([1.0, 1.0, 2.0], 1.5)


@pytest.mark.parametrize("target", [math.nan, math.inf, -math.inf])
def test_non_finite_targets_get_their_own_error(target):
    """Not 'above the all-steps cost' (what NaN used to read as): the target is not a number."""
    for call in (
        lambda: exit_fractions(COSTS, target),
        lambda: solve_thresholds(COSTS, np.zeros((10, 5)), target),
    ):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "is not a finite number" in message
        assert "0.76 GMACs" in message and "3.99 GMACs" in message
        assert "above" not in message and "below" not in message


def test_exit_fractions_accept_torch():
    q = exit_fractions(torch.tensor(COSTS), 1.5e9)
    assert isinstance(q, np.ndarray) and q @ COSTS == pytest.approx(1.5e9)


def test_exit_fractions_move_monotonically_with_the_target():
    """Every cumulative share falls as the target rises: what the solve's search relies on."""
    shares = np.array([np.cumsum(exit_fractions(COSTS, t))[:-1] for t in np.linspace(0.7601e9, 3.9899e9, 400)])
    assert np.all(np.diff(shares, axis=0) <= 1e-15)


# ------------------------------------------------------------------ the two threshold rules


@pytest.mark.parametrize("seed", range(6))
def test_rules_match_the_loops_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n, steps = int(rng.integers(1, 400)), int(rng.integers(1, 7))
    conf = rng.random((n, steps)).astype(np.float32)
    q = rng.dirichlet(np.ones(steps))
    check_identical(conf, q)


@pytest.mark.parametrize("levels", [2, 3, 5])
def test_rules_match_the_loops_with_ties(levels):
    rng = np.random.default_rng(levels)
    conf = rng.integers(0, levels, (300, 4)) / levels
    for q in ([0.5, 0.2, 0.2, 0.1], [0.9, 0.05, 0.05, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0]):
        check_identical(conf, np.array(q))


def test_ties_can_exit_more_than_the_quota_and_leave_later_steps_empty():
    conf = np.array([[0.9, 0.1, 0.5]] * 4 + [[0.2, 0.3, 0.5]])
    q = np.array([0.2, 0.6, 0.2])  # 1 image at step 1, but four tie at 0.9
    eta = thresholds_msdnet(conf, q)  # step 2 wants 3 but 1 is left: nobody exits there (the rule)
    assert eta[0] == pytest.approx(0.9) and eta[1] == np.inf
    eta = thresholds(conf, q)  # 4 should be out by step 2, and 4 are: nobody exits there
    assert eta[0] == pytest.approx(0.9) and eta[1] == np.inf
    check_identical(conf, q)
    allsame = np.full((5, 3), 0.7)
    for rule in (thresholds, thresholds_msdnet):
        eta = rule(allsame, q)  # all exit at step 1; nobody is left for step 2
        assert eta[0] == pytest.approx(0.7) and eta[1] == np.inf
    check_identical(allsame, q)


def test_quota_below_one_image_means_nobody_exits():
    conf = np.random.default_rng(1).random((9, 3))
    q = np.array([0.1, 0.05, 0.85])  # 9 q = 0.9, 0.45: below one image each
    eta = thresholds_msdnet(conf, q)
    assert eta[0] == np.inf and eta[1] == np.inf and eta[2] == -np.inf
    eta = thresholds(conf, q)  # cumulative: floor(0.9) = 0 by step 1, floor(1.35) = 1 by step 2
    assert eta[0] == np.inf and eta[1] == conf[:, 1].max() and eta[2] == -np.inf
    check_identical(conf, q)


def test_cumulative_rule_rounds_the_running_total_down():
    """By step k exactly floor(N (q_1 + ... + q_k)) images are out, for distinct scores: not
    rounded to nearest (3 and 6 here), not floored per step (2 and 4, the MSDNet rule)."""
    conf = np.random.default_rng(5).random((10, 3))
    q = np.array([0.27, 0.27, 0.46])  # 10 x cumulative = 2.7, 5.4
    counts = simulate(conf, thresholds(conf, q), [1.0, 2.0, 3.0]).counts
    assert counts.tolist() == [2, 3, 5]
    assert simulate(conf, thresholds_msdnet(conf, q), [1.0, 2.0, 3.0]).counts.tolist() == [2, 2, 6]


def test_a_quota_that_covers_everyone_still_in_lets_unseen_images_out_too():
    """eta = -inf, not the lowest calibration score: images scoring below every calibration
    image (log-odds are often negative, down to -inf) leave where the plan says all have left."""
    conf = np.array([[4.0, 3.0, 1.0], [3.0, 2.0, 1.0], [2.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    q = np.array([0.5, 0.5, 0.0])  # 2 out by step 1, all 4 by step 2: the quota equals those left
    eta = thresholds(conf, q)
    assert eta.tolist() == [3.0, -np.inf, -np.inf]
    unseen = np.array([[-50.0, -50.0, -50.0], [-np.inf, -np.inf, -np.inf], [0.0, 0.0, 0.0]])
    assert exit_steps(unseen, eta).tolist() == [2, 2, 2]
    assert thresholds(conf, q, weights=np.ones(4))[1] == -np.inf
    assert thresholds(conf, q, weights=[0.5, 0.25, 1.0, 3.0])[1] == -np.inf
    check_identical(conf, q)


@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_at_the_glance_sends_everyone_home_after_step_one(weighted):
    rng = np.random.default_rng(0)
    conf = rng.normal(0.0, 1.0, (200, 4))
    weights = np.full(200, 1 / 3) if weighted else None  # running sums overshoot the total by rounding
    eta = thresholds(conf, [1.0, 0.0, 0.0, 0.0], weights)
    assert eta[0] == -np.inf
    assert np.all(exit_steps(np.full((3, 4), -1e30), eta) == 1)


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
    assert np.array_equal(thresholds_msdnet(one_step, [1.0]), [-np.inf])
    check_identical(one_step, np.array([1.0]))


def test_thresholds_realize_the_fractions_without_ties():
    rng = np.random.default_rng(3)
    conf = rng.random((10_000, 5))
    q = exit_fractions(COSTS, 1.8e9)
    result = simulate(conf, thresholds(conf, q), COSTS)
    assert np.array_equal(np.cumsum(result.counts)[:-1], np.floor(10_000 * np.cumsum(q)[:-1]))
    assert result.mean_cost == pytest.approx(1.8e9, rel=1e-3)
    msdnet = simulate(conf, thresholds_msdnet(conf, q), COSTS)
    assert np.array_equal(msdnet.counts[:-1], np.floor(10_000 * q[:-1]))


def test_thresholds_accept_torch_and_reject_bad_inputs():
    conf = torch.rand(100, 3, generator=torch.Generator().manual_seed(0))
    q = torch.tensor([0.5, 0.3, 0.2])
    for rule in (thresholds, thresholds_msdnet):
        assert np.array_equal(rule(conf, q), rule(conf.numpy(), q.numpy()))
        assert np.array_equal(rule(conf.bfloat16(), q), rule(conf.bfloat16().float(), q))
        with pytest.raises(ValueError, match="sum to 1"):
            rule(conf, [0.5, 0.3, 0.3])
        with pytest.raises(ValueError, match="3 steps"):
            rule(conf, [0.5, 0.5])
        with pytest.raises(ValueError, match="NaN"):
            rule(np.full((2, 3), np.nan), q)


def test_ties_that_leave_a_step_short():
    """Saturated confidences: 3 of 4 images tie at 1.0 at step 1, quota 1; step 2 wants 2 of 1 left."""
    conf = np.array([[1.0, 0.5, 0.1], [1.0, 0.6, 0.1], [1.0, 0.7, 0.1], [0.2, 0.9, 0.1]])
    q = np.array([0.25, 0.5, 0.25])
    rule = thresholds_msdnet(conf, q)
    assert rule[0] == 1.0 and rule[1] == np.inf  # the rule: nobody else exits at step 2
    cumulative = thresholds(conf, q)
    assert cumulative[0] == 1.0 and cumulative[1] == np.inf  # 3 out by step 2 as planned, 3 are
    check_identical(conf, q)


def test_weighted_thresholds_count_images_by_weight():
    conf = np.array([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.6, 0.0]])
    q = np.array([0.5, 0.5])
    assert thresholds(conf, q)[0] == 0.8
    assert thresholds(conf, q, weights=[2.0, 1.0, 1.0, 0.0])[0] == 0.9  # weight 2 fills the half


@pytest.mark.parametrize("seed", range(4))
def test_weighted_rule_matches_its_loop(seed):
    """Dyadic weights (sums exact in floating point), zeros among them, and ties."""
    rng = np.random.default_rng(seed)
    n, steps = int(rng.integers(2, 300)), int(rng.integers(2, 6))
    conf = rng.integers(0, 12, (n, steps)) / 4.0
    weights = rng.integers(0, 9, n) / 4.0
    weights[0] = 1.0
    shuffle = rng.permutation(n)
    for q in (rng.dirichlet(np.ones(steps)), exit_fractions(np.arange(1.0, steps + 1), 1.5)):
        eta = thresholds(conf, q, weights)
        assert np.array_equal(eta, np.array(loop_cumulative(conf, q, weights)))
        assert np.array_equal(eta, thresholds(conf[shuffle], q, weights[shuffle]))  # order-free


# ------------------------------------------------------------------ non-finite scores


def test_nan_rows_are_dropped_from_calibration_with_a_warning(caplog):
    rng = np.random.default_rng(7)
    conf = scores_like(rng, 1000)
    broken = conf.copy()
    broken[[3, 500, 999], [0, 2, 4]] = np.nan
    finite = np.delete(conf, [3, 500, 999], axis=0)
    q = exit_fractions(COSTS, 1.7e9)
    with caplog.at_level("WARNING", logger="gfpipe.budget.solver"):
        eta = thresholds(broken, q)
    assert "dropping 3 of 1000 calibration rows" in caplog.text and "NaN" in caplog.text
    assert np.array_equal(eta, thresholds(finite, q))
    assert np.array_equal(thresholds_msdnet(broken, q), thresholds_msdnet(finite, q))
    solution = solve_thresholds(COSTS, broken, 1.7e9)
    assert solution.dropped == 3 and solution.images == 997
    assert np.array_equal(solution.thresholds, solve_thresholds(COSTS, finite, 1.7e9).thresholds)


def test_calibration_without_a_finite_row_is_an_error_that_says_so():
    with pytest.raises(ValueError, match=r"all 4 calibration rows have NaN scores.*model outputs"):
        solve_thresholds(COSTS, np.full((4, 5), np.nan), 2e9)
    with pytest.raises(ValueError, match="all 2 calibration rows"):
        thresholds(np.array([[np.nan, 1.0], [1.0, np.nan]]), [0.5, 0.5])


def test_infinite_scores_count_against_the_quota_where_they_exit():
    """A score of +inf (a one-class model) passes even eta = +inf, in the engine and in
    `simulate`; the rule counts those images where they really leave."""
    conf = np.random.default_rng(2).random((100, 3))
    conf[:10, 0] = np.inf
    conf[10:20, 1] = np.inf
    conf[20:25] = -np.inf
    q = np.array([0.0, 0.5, 0.5])  # nobody planned at step 1, but 10 images are certain there
    eta = thresholds(conf, q)
    assert eta[0] == np.inf
    assert simulate(conf, eta, [1.0, 2.0, 3.0]).counts.tolist() == [10, 40, 50]
    assert np.array_equal(thresholds(conf, q, weights=np.ones(100)), eta)
    assert np.array_equal(eta, np.array(loop_cumulative(conf, q)))
    check_identical(conf, q)


def test_a_one_class_model_solves_without_trouble():
    """Every score +inf: everyone exits at the glance whatever the thresholds; that is <= any budget."""
    conf = np.full((50, 5), np.inf)
    for target in (0.76e9, 2e9, 3.99e9):
        solution = solve_thresholds(COSTS, conf, target)
        assert not np.isnan(solution.thresholds).any()
        assert solution.mean_cost == COSTS[0]
    weighted = solve_thresholds(COSTS, conf, 2e9, weights=np.arange(1.0, 51.0))
    assert weighted.mean_cost == pytest.approx(COSTS[0])


# ------------------------------------------------------------------ the budget solve (a ceiling)


def heavy_ties(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    s = scores_like(rng, n)
    if name == "float16":  # a half-precision model: about 3 significant digits
        return s.astype(np.float16).astype(np.float64)
    if name == "rounded":  # every score on a 0.05 grid: about 1% of images per value
        return np.round(s * 20.0) / 20.0
    if name.startswith("duplicates"):  # 10% (20%) of the archive is one image, repeated
        s[rng.random(n) < int(name[10:] or 10) / 100] = s[0]
        return s
    if name == "plus-inf":  # 0.2% certain at some step (a score of +inf): they exit whatever eta is
        s[rng.random((n, 5)) < 0.0005] = np.inf
        return s
    return s


TARGETS = np.linspace(0.78e9, 3.97e9, 9)


@pytest.mark.parametrize("name", ["smooth", "float16", "rounded", "duplicates", "duplicates20", "plus-inf"])
@pytest.mark.parametrize("n", [1000, 5000])
def test_solve_spends_at_most_the_target_and_within_half_a_percent(name, n):
    """Budgets are a ceiling: on its own calibration data the solve never spends more than the
    target, and (N >= 1000) no more than 0.5% less, for targets over the whole range."""
    scores = heavy_ties(name, np.random.default_rng(n), n)
    for target in TARGETS:
        solution = solve_thresholds(COSTS, scores, target)
        realized = simulate(scores, solution.thresholds, COSTS).mean_cost
        assert realized == solution.mean_cost
        assert realized <= target, (name, target)
        assert realized >= 0.995 * target, (name, target, realized / target)
        assert solution.target == target and 0.995 <= solution.ratio <= 1.0
        assert solution.fractions @ COSTS == pytest.approx(solution.aim, rel=1e-9)


def test_solve_comes_down_from_above_when_a_tied_group_blocks_the_way():
    """A fifth of the images are one image repeated: below these targets every aim either exits
    the group a step early (far under) or not (over). The solve then starts from the trial just
    over the target and lowers one threshold, releasing just enough other images earlier."""
    scores = heavy_ties("duplicates20", np.random.default_rng(3), 1000)
    for target in np.linspace(0.78e9, 3.97e9, 33)[[28, 29, 31]]:
        solution = solve_thresholds(COSTS, scores, target)
        assert 0.995 * target <= solution.mean_cost <= target


def test_msdnet_rule_overspends_its_own_calibration_data():
    """Why the solve exists: quotas floored step by step push leftovers to dearer steps."""
    scores = scores_like(np.random.default_rng(11), 256)
    ratios = [
        simulate(scores, thresholds_msdnet(scores, exit_fractions(COSTS, t)), COSTS).mean_cost / t for t in TARGETS
    ]
    assert max(ratios) > 1.005
    for target in TARGETS:
        assert solve_thresholds(COSTS, scores, target).mean_cost <= target


def test_weighted_solve_is_a_ceiling_on_the_weighted_mean():
    rng = np.random.default_rng(12)
    scores = heavy_ties("rounded", rng, 3000)
    weights = rng.random(3000) * 3.0
    for target in TARGETS[::2]:
        solution = solve_thresholds(COSTS, scores, target, weights=weights)
        realized = simulate(scores, solution.thresholds, COSTS, weights=weights).mean_cost
        assert realized == solution.mean_cost
        assert 0.995 * target <= realized <= target


def test_solve_at_the_limits():
    """At C_1 every image, seen or not, leaves after the glance; at C_T nobody leaves early."""
    scores = scores_like(np.random.default_rng(13), 1000)
    bottom = solve_thresholds(COSTS, scores, COSTS[0])
    assert bottom.thresholds[0] == -np.inf and bottom.mean_cost == COSTS[0]
    assert np.all(exit_steps(np.full((2, 5), -1e9), bottom.thresholds) == 1)
    top = solve_thresholds(COSTS, scores, COSTS[-1])
    assert np.all(top.thresholds[:-1] == np.inf) and top.mean_cost == COSTS[-1]
    with pytest.raises(ValueError, match="below the glance-only cost"):
        solve_thresholds(COSTS, scores, 0.5e9)
    with pytest.raises(ValueError, match="above the all-steps cost"):
        solve_thresholds(COSTS, scores, 4.5e9)
    with pytest.raises(ValueError, match="5 steps, costs 3"):
        solve_thresholds(COSTS[:3], scores, 2e9)


def test_saturated_confidences_undershoot_and_exit_scores_do_not():
    """A trained-like model: logit margins so large that float32 max-softmax is exactly 1.0 for
    many images. Ranked by max-softmax, the tied group exits together and a budget at 90% of the
    range is far underspent on the calibration data itself; ranked by exit scores (computed
    from the logits, they keep ordering those images), the solve lands under it within 0.5%."""
    from gfpipe.budget.scores import exit_scores

    g = torch.Generator().manual_seed(0)
    n, steps, classes = 2000, 5, 10
    margin = torch.randn(n, 1, generator=g) * 6.0 + 16.0 + 2.0 * torch.arange(steps)
    margin = margin + torch.randn(n, steps, generator=g)  # (n, T): sureness grows with the step
    top = torch.randint(0, classes, (n, steps, 1), generator=g)
    logits = torch.randn(n, steps, classes, generator=g).scatter_add(-1, top, margin.unsqueeze(-1))
    confidences = torch.softmax(logits, dim=-1).amax(dim=-1).numpy()  # (n, T) float32
    assert (confidences[:, 0] == 1.0).mean() > 0.3  # saturated at the glance already
    target = COSTS[0] + 0.9 * (COSTS[-1] - COSTS[0])

    msdnet = simulate(confidences, thresholds_msdnet(confidences, exit_fractions(COSTS, target)), COSTS)
    assert msdnet.mean_cost < 0.85 * target
    tied = solve_thresholds(COSTS, confidences, target)  # even the best thresholds on ties
    assert tied.mean_cost < 0.97 * target

    scores = exit_scores(logits).numpy()
    assert np.unique(scores[:, 0]).size == n
    solution = solve_thresholds(COSTS, scores, target)
    assert 0.995 * target <= solution.mean_cost <= target
    assert simulate(scores, solution.thresholds, COSTS).mean_cost == solution.mean_cost


def test_solve_takes_scores_as_any_increasing_function_of_confidence():
    """Thresholds move with the scale; the exits do not."""
    rng = np.random.default_rng(14)
    scores = scores_like(rng, 2000)
    confidence = 1.0 / (1.0 + np.exp(-scores))
    a = solve_thresholds(COSTS, scores, 2.2e9)
    b = solve_thresholds(COSTS, confidence, 2.2e9)
    assert np.array_equal(exit_steps(scores, a.thresholds), exit_steps(confidence, b.thresholds))


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


def test_simulate_weights_the_mean_cost():
    conf = np.array([[1.0, 0.0], [0.0, 0.0]])
    result = simulate(conf, [0.5, -np.inf], [1.0, 3.0], weights=[3.0, 1.0])
    assert result.mean_cost == 1.5 and result.counts.tolist() == [1, 1]
