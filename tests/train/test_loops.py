"""The per-worker stages in plain torch (no Ray): what each stage trains, Eq. 3, PPO's returns and
its effect, the cosine schedule, and resuming mid-run to the same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gfpipe.model import GFNet
from gfpipe.train.config import resolve_config
from gfpipe.train.data import normalise
from gfpipe.train.loops import SupervisedObjective, Trainer

PLAIN = {"mean": [0, 0, 0], "std": [1, 1, 1], "resize": 64, "crop": 64}


def config(**overrides):
    base = {
        "model": {"backbone": "tiny", "tiny_width": 4, "input_size": 64, "patch_size": 32, "T": 3, "num_classes": 4},
        "preprocessing": PLAIN,
        "augment": {"random_resized_crop": False, "hflip": False},
        "data": {"train": "unused", "val": "unused"},
        "batch_size": 16,
        "stage1": {"epochs": 1},
        "stage2": {"epochs": 1},
        "stage3": {"epochs": 1},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return resolve_config(base)


def random_batches(n: int = 32, batch: int = 16, seed: int = 0, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def trainer(cfg) -> Trainer:
    torch.manual_seed(0)
    return Trainer(cfg, GFNet(cfg.model), "cpu")


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_each_stage_trains_exactly_its_parts(stage):
    t = trainer(config())
    parts = {n: snapshot(getattr(t.model, n)) for n in ("global_encoder", "local_encoder", "classifier", "policy")}
    metrics = t.train_epoch(stage, 0, random_batches())
    assert metrics["images"] == 32 and math.isfinite(metrics["loss_sum"])
    moved = {n for n in parts if changed(parts[n], getattr(t.model, n))}
    expected = {"policy"} if stage == "stage2" else {"global_encoder", "local_encoder", "classifier"}
    assert moved == expected
    assert t.completed == (stage, 0)


def test_a_frozen_global_encoder_and_its_cascade_head_stay_put():
    cfg = config(model={"classifier": "cascade", "classifier_hidden": 0}, stage1={"freeze_global": True, "epochs": 1})
    t = trainer(cfg)
    head = t.model.global_encoder.head
    assert not torch.equal(t.model.classifier.fc_1.weight, head.weight)  # fresh layers differ
    glob, fc2 = snapshot(t.model.global_encoder), snapshot(t.model.classifier.fc_2)
    t.train_epoch("stage1", 0, random_batches())
    assert not changed(glob, t.model.global_encoder)  # weights and BatchNorm statistics
    # step 1 predicts with the frozen encoder's own head, as inference.py does; nothing moves it
    assert torch.equal(t.model.classifier.fc_1.weight, head.weight)
    assert torch.equal(t.model.classifier.fc_1.bias, head.bias)
    assert changed(fc2, t.model.classifier.fc_2)


def test_supervised_loss_is_equation_3():
    cfg = config(stage1={"aux_weight": 2.5})
    torch.manual_seed(0)
    model = GFNet(cfg.model).train()
    x = normalise(random_batches(8, 8)[0][0], cfg.preprocessing)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    noise = torch.rand(2, 8, 2, generator=torch.Generator().manual_seed(1))
    model.eval()  # no BatchNorm updates, so the manual pass below sees the same numbers
    loss, logits = SupervisedObjective(model, cfg.stage1)(x, y, noise)
    logits_1, state = model.glance(x)
    main, aux = [F.cross_entropy(logits_1, y)], [F.cross_entropy(model.global_encoder.head(state.pooled), y)]
    for t in range(2):
        location = model.random_location(state)._replace(action=noise[t])
        out, state = model.focus(x, state, location)
        main.append(F.cross_entropy(out, y))
        aux.append(F.cross_entropy(model.local_encoder.head(state.pooled), y))
    expected = (sum(main) + 2.5 * sum(aux)) / 3
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert logits.shape == (3, 8, 4)


def test_rollout_returns_are_discounted_rewards_normalised_over_steps_and_images():
    t = trainer(config(model={"T": 4}))
    t.begin_stage("stage2")
    x = normalise(random_batches(16, 16)[0][0], t.config.preprocessing)
    y = torch.arange(16) % 4
    data = t.rollout(x, y, torch.Generator().manual_seed(0))
    rewards = data["rewards"].numpy()  # (3, 16)
    gamma = t.config.stage2.gamma
    raw = np.stack(
        [rewards[0] + gamma * rewards[1] + gamma**2 * rewards[2], rewards[1] + gamma * rewards[2], rewards[2]]
    )
    expected = (raw - raw.mean()) / (raw.std(ddof=1) + 1e-5)
    assert np.allclose(data["returns"].numpy(), expected, atol=1e-5)
    probs = data["logits"].softmax(-1)[:, torch.arange(16), y]  # (T, 16): p_t[y]
    assert np.allclose(rewards, (probs[1:] - probs[:-1]).numpy(), atol=1e-6)
    assert data["actions"].min() >= 0 and data["actions"].max() <= 1


def planted(n: int, seed: int):
    """64x64 noise whose label (0..3) is a fine texture only in the top-left corner: an area
    downsample to the 16-pixel glance averages it away, a full-resolution patch there reads it."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, 64, 64, generator=g) * 60).to(torch.uint8)
    y = torch.randint(0, 4, (n,), generator=g)
    rows, cols = torch.arange(24).view(24, 1) % 2, torch.arange(24).view(1, 24) % 2
    textures = [rows.expand(24, 24) * 255, cols.expand(24, 24) * 255, (rows ^ cols) * 255, torch.full((24, 24), 128)]
    for i in range(n):
        x[i, :, 4:28, 4:28] = textures[int(y[i])].to(torch.uint8)
    return x, y


def test_the_policy_gradient_moves_the_policy_to_a_planted_target():
    """Only the top-left corner tells the class; stage II must move the actor's mean there
    (action (0, 0) puts the patch's corner at pixel 0), and step 2 must become more accurate."""
    cfg = config(
        model={"T": 2, "glance_size": 16, "glance_interpolation": "area"},
        batch_size=64,
        stage1={"epochs": 4, "encoder_lr": 0.05},
        stage2={"epochs": 12, "update_epochs": 4, "lr": 3e-3},
        stage3={"epochs": 0},
    )
    t = trainer(cfg)
    x, y = planted(512, 0)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]
    held_out = planted(256, 1)

    def mean_action() -> torch.Tensor:
        t.model.eval()
        with torch.no_grad():
            _, state = t.model.glance(normalise(held_out[0], cfg.preprocessing))
            return t.model.locate(state).action.mean(0)

    for epoch in range(4):
        t.train_epoch("stage1", epoch, batches)
    before, accuracy_before = mean_action(), t.evaluate([held_out])["correct"]
    assert accuracy_before[0] < 0.35 * 256, "the glance must not see the label"
    for epoch in range(12):
        t.train_epoch("stage2", epoch, batches)
    after, accuracy_after = mean_action(), t.evaluate([held_out])["correct"]
    assert after.norm() < 0.6 * before.norm(), (before, after)  # towards (0, 0)
    assert accuracy_after[1] > accuracy_before[1] + 0.05 * 256


def test_cosine_schedule_per_epoch():
    t = trainer(config(stage1={"epochs": 4, "encoder_lr": 0.01, "classifier_lr": 0.1}))
    seen = []
    for epoch in range(4):
        t.train_epoch("stage1", epoch, random_batches(16))
        seen.append([g["lr"] for g in t.optimizer.param_groups])
    for epoch, (encoder, classifier) in enumerate(seen):
        factor = 0.5 * (1 + math.cos(math.pi * epoch / 4))
        assert encoder == pytest.approx(0.01 * factor) and classifier == pytest.approx(0.1 * factor)


def test_a_resumed_run_reaches_the_same_weights_as_an_uninterrupted_one():
    cfg = config(stage1={"epochs": 2}, stage2={"epochs": 2}, stage3={"epochs": 1})
    batches = random_batches(32)
    straight = trainer(cfg)
    for stage, epochs in straight.remaining():
        for epoch in epochs:
            straight.train_epoch(stage, epoch, batches)

    first = trainer(cfg)
    first.train_epoch("stage1", 0, batches)
    first.train_epoch("stage1", 1, batches)
    first.train_epoch("stage2", 0, batches)
    saved = first.state_dict()
    resumed = trainer(cfg)
    resumed.load_state_dict(saved)
    assert resumed.remaining() == [("stage2", [1]), ("stage3", [0])]
    for stage, epochs in resumed.remaining():
        for epoch in epochs:
            resumed.train_epoch(stage, epoch, batches)
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value.float(), resumed.model.state_dict()[key].float(), atol=1e-6), key


def test_calibration_scores_are_exit_scores_of_every_step():
    t = trainer(config())
    batches = random_batches(32)
    scores, predictions, labels = t.calibrate(batches)
    assert (
        scores.shape == (32, 3)
        and predictions.shape == (32, 3)
        and labels.tolist() == torch.cat([b[1] for b in batches]).tolist()
    )
    logits = t.model.anytime(normalise(torch.cat([b[0] for b in batches]), t.config.preprocessing))
    probs = logits.softmax(-1).amax(-1).T.numpy()
    assert np.allclose(1 / (1 + np.exp(-scores)), probs, atol=1e-5)
