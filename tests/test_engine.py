"""The engine is an optimisation, not another model: same rows as anytime + simulate."""

import numpy as np
import pytest
import torch

from gfpipe.budget.control import BudgetController
from gfpipe.budget.solver import exit_fractions, simulate, thresholds
from gfpipe.engine import EarlyExitEngine, batched
from gfpipe.model import GFNet, GFNetConfig

T = 4


def tiny_model(classifier: str = "gru") -> GFNet:
    torch.manual_seed(0)
    return GFNet(GFNetConfig(backbone="tiny", tiny_width=4, num_classes=6, input_size=64, patch_size=32,
                             T=T, classifier=classifier)).eval()


def images(n: int, seed: int, scale: float = 1.0, size: int = 64) -> torch.Tensor:
    return scale * torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def anytime_confidences(model: GFNet, x: torch.Tensor):
    probs = model.anytime(x).softmax(-1)  # (T, N, K)
    conf, pred = probs.max(-1)
    return conf.T.numpy(), pred.T.numpy()  # (N, T)


def solved_thresholds(model: GFNet, calibration: torch.Tensor, target_share: float = 0.5) -> np.ndarray:
    conf, _ = anytime_confidences(model, calibration)
    costs = np.arange(1, T + 1, dtype=float)
    return thresholds(conf, exit_fractions(costs, 1 + target_share * (T - 1)))


def mixed_batches(x: torch.Tensor, sizes: list[int]):
    keys = [f"img-{i}" for i in range(len(x))]
    start = 0
    for size in sizes:
        yield keys[start:start + size], x[start:start + size]
        start += size
    assert start == len(x)


@pytest.mark.parametrize("classifier", ["gru", "cascade"])
def test_rows_match_anytime_plus_simulate(classifier):
    model = tiny_model(classifier)
    eta = solved_thresholds(model, images(64, seed=1))
    x = images(60, seed=2)
    conf, pred = anytime_confidences(model, x)
    sim = simulate(conf, eta, np.arange(1, T + 1))
    assert len(set(sim.exit_steps.tolist())) > 2, "the test needs images exiting at several steps"

    engine = EarlyExitEngine(model, eta, batch_size=8)
    rows = list(engine.run(mixed_batches(x, [3, 7, 1, 16, 5, 20, 8])))
    by_key = {r["key"]: r for r in rows}
    assert len(rows) == len(by_key) == 60
    costs = engine.costs
    for i in range(60):
        row, step = by_key[f"img-{i}"], int(sim.exit_steps[i])
        assert row["exit_step"] == step
        assert row["label"] == pred[i, step - 1]
        assert row["confidence"] == pytest.approx(conf[i, step - 1], abs=1e-5)
        assert row["macs"] == costs[step - 1]
        assert len(row["glimpses"]) == step - 1
        assert row["topk_labels"][0] == row["label"] and len(row["topk_probs"]) == 5
        assert row["label_name"] == model.class_names[row["label"]]


def test_every_call_is_full_except_one_flush_call_per_step():
    model = tiny_model()
    eta = solved_thresholds(model, images(64, seed=1))
    engine = EarlyExitEngine(model, eta, batch_size=8)
    rows = list(engine.run(mixed_batches(images(100, seed=3), [1, 2, 30, 4, 13, 50])))
    assert sorted(r["key"] for r in rows) == sorted(f"img-{i}" for i in range(100))
    partial = [(step, n) for step, n in engine.stats.calls if n != 8]
    assert all(n < 8 for _, n in partial)
    assert len({step for step, _ in partial}) == len(partial) <= T
    assert sum(n for step, n in engine.stats.calls if step == 1) == 100
    assert engine.stats.images == 100 and engine.stats.max_waiting < 16


def test_rows_leave_as_soon_as_they_exit():
    """An image confident at the glance is yielded before the next input batch is even read."""
    model = tiny_model()
    engine = EarlyExitEngine(model, [0.0] * T, batch_size=4)
    pulled = []

    def source():
        for b in range(3):
            pulled.append(b)
            yield [f"{b}-{i}" for i in range(4)], images(4, seed=b)

    stream = engine.run(source())
    first = next(stream)
    assert first["key"] == "0-0" and first["exit_step"] == 1 and pulled == [0]


def test_glimpses_are_pixel_corners_inside_the_image():
    model = tiny_model()
    engine = EarlyExitEngine(model, [2.0] * T, batch_size=5)  # nobody is confident: all T steps
    rows = list(engine.run(batched([str(i) for i in range(5)], images(5, seed=4), 5)))
    for row in rows:
        assert row["exit_step"] == T and len(row["glimpses"]) == T - 1
        assert all(0 <= r <= 32 and 0 <= c <= 32 for r, c in row["glimpses"])
    assert engine.stats.calls == [(1, 5), (2, 5), (3, 5), (4, 5)]


def test_bad_arguments_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="need 4 thresholds"):
        EarlyExitEngine(model, [0.5, 0.5], batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EarlyExitEngine(model, [0.5] * T, batch_size=0)
    with pytest.raises(ValueError, match="for CUDA devices"):
        EarlyExitEngine(model, [0.5] * T, batch_size=4, autocast_dtype=torch.bfloat16)
    engine = EarlyExitEngine(model, [0.5] * T, batch_size=4)
    with pytest.raises(ValueError, match="3 keys for 2 images"):
        list(engine.run([(["a", "b", "c"], images(2, seed=0))]))
    with pytest.raises(ValueError, match="preprocessed floats"):
        list(engine.run([(["a"], torch.zeros(1, 3, 64, 64, dtype=torch.uint8))]))
    with pytest.raises(ValueError, match=r"shape \(n, 3, 64, 64\)"):
        list(engine.run([(["a"], torch.zeros(1, 3, 32, 32))]))
    half = list(engine.run([(["a"], images(1, seed=0).half())]))  # cast to the model's dtype
    assert len(half) == 1


def test_controller_shadow_images_run_all_steps_and_are_reported():
    model = tiny_model()
    calib_conf, _ = anytime_confidences(model, images(64, seed=1))
    costs = np.array(tiny_costs := EarlyExitEngine(model, [0.5] * T, 4).costs)
    target = float(costs[0] + 0.4 * (costs[-1] - costs[0]))
    controller = BudgetController(costs, target, calib_conf, shadow_share=0.2, seed=0)
    engine = EarlyExitEngine(model, None, batch_size=8, controller=controller)
    keys = [f"k{i}" for i in range(80)]
    rows = list(engine.run(batched(keys, images(80, seed=5), 16)))
    shadow = {k for k in keys if controller.is_shadow(k)}
    assert shadow, "seeded key hash should pick some shadow images at share 0.2"
    assert all(r["exit_step"] == T for r in rows if r["key"] in shadow)
    assert controller.images == 80 and controller.shadow_images == len(shadow)
    assert controller.spent == pytest.approx(sum(r["macs"] for r in rows))
    assert len(tiny_costs) == T


@pytest.mark.slow
@pytest.mark.parametrize("calibration_scale,stream_scale", [(2.0, 0.5), (0.5, 2.0)])
def test_online_control_keeps_a_shifted_stream_on_budget(calibration_scale, stream_scale):
    """Thresholds calibrated on one population, a stream from another: with the controller the
    realized mean cost (shadow images included) lands within 2% of the target; without, it
    misses by more. Input scale changes how confident the model is, so it stands in for easy
    and hard images."""
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="tiny", tiny_width=4, num_classes=6, input_size=32, patch_size=16, T=T)).eval()
    torch.nn.init.normal_(model.classifier.fc.weight, 0, 1.0)  # confidences that vary per image
    calib_conf, _ = anytime_confidences(model, images(512, seed=7, size=32, scale=calibration_scale))
    stream = images(3072, seed=8, size=32, scale=stream_scale)
    costs = np.array(EarlyExitEngine(model, [0.5] * T, 4).costs)
    target = float(costs[0] + 0.4 * (costs[-1] - costs[0]))

    fixed = thresholds(calib_conf, exit_fractions(costs, target))
    stream_conf, _ = anytime_confidences(model, stream)
    uncontrolled = simulate(stream_conf, fixed, costs).mean_cost
    assert abs(uncontrolled / target - 1) > 0.02

    controller = BudgetController(costs, target, calib_conf, total_images=len(stream), seed=0)
    engine = EarlyExitEngine(model, None, batch_size=32, controller=controller)
    keys = [f"img-{i}" for i in range(len(stream))]
    rows = list(engine.run(batched(keys, stream, 64)))
    realized = sum(r["macs"] for r in rows) / len(rows)
    assert len(rows) == len(stream)
    print(f"realized/target {realized / target:.4f}, without control {uncontrolled / target:.4f}")
    assert abs(realized / target - 1) < 0.02, (realized / target, uncontrolled / target)


def test_channels_last_gives_the_same_rows():
    model = tiny_model()
    eta = solved_thresholds(model, images(64, seed=1))
    x = images(24, seed=9)
    plain = list(EarlyExitEngine(model, eta, batch_size=8).run(batched([str(i) for i in range(24)], x, 8)))
    other = list(EarlyExitEngine(tiny_model(), eta, batch_size=8, channels_last=True)
                 .run(batched([str(i) for i in range(24)], x, 8)))
    by_key = {r["key"]: r for r in other}
    for row in plain:
        twin = by_key[row["key"]]
        assert (twin["exit_step"], twin["label"]) == (row["exit_step"], row["label"])
        assert twin["confidence"] == pytest.approx(row["confidence"], abs=1e-5)
