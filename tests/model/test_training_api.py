"""What training needs from the model: the action distribution, given locations, encoder heads,
detached policy input, dropout and drop-connect, all without changing inference."""

import pytest
import torch

from gfpipe.model import GFNet, GFNetConfig
from gfpipe.model.policy import action_entropy, action_log_prob, sample_action

from .official_files import official_checkpoint


def tiny(**overrides) -> GFNet:
    torch.manual_seed(0)
    cfg = dict(backbone="tiny", tiny_width=4, num_classes=5, input_size=64, patch_size=32, T=3, encoder_heads=True)
    return GFNet(GFNetConfig(**{**cfg, **overrides}))


def test_action_distribution_matches_a_clamped_gaussian():
    mean = torch.tensor([[0.5, 0.02], [0.97, 0.3]])
    gen = torch.Generator().manual_seed(0)
    actions = torch.stack([sample_action(mean, 0.1, gen) for _ in range(4000)])  # (4000, 2, 2)
    assert actions.min() >= 0 and actions.max() <= 1
    assert (actions[:, 0, 1] == 0).float().mean() > 0.3  # mass below 0 is clamped onto the edge
    assert actions[:, 0, 0].mean() == pytest.approx(0.5, abs=0.01)
    assert actions[:, 0, 0].std() == pytest.approx(0.1, abs=0.01)
    action = torch.tensor([[0.55, 0.0], [1.0, 0.25]])
    expected = torch.distributions.Normal(mean, 0.1).log_prob(action).sum(-1)
    assert torch.allclose(action_log_prob(mean, action, 0.1), expected)
    assert action_entropy(0.1) == pytest.approx(float(torch.distributions.Normal(0.0, 0.1).entropy()) * 2)


def test_focus_at_given_and_random_locations():
    model = tiny().eval()
    x = torch.randn(4, 3, 64, 64)
    _, state = model.glance(x)
    location = model.random_location(state, torch.Generator().manual_seed(1))
    assert location.action.shape == (4, 2) and location.action.min() >= 0 and location.action.max() <= 1
    assert torch.equal(location.hidden, state.policy)
    _, after = model.focus(x, state, location)
    assert torch.equal(after.glimpses[:, 0], location.action)
    again = model.random_location(state, torch.Generator().manual_seed(1))
    assert torch.equal(again.action, location.action)  # seeded


def test_encoder_heads_read_the_steps_own_pooled_features():
    model = tiny().eval()
    x = torch.randn(3, 3, 64, 64)
    _, state = model.glance(x)
    pooled, _ = model.global_encoder(model.glance_input(x))
    assert torch.allclose(model.encoder_logits(state), model.global_encoder.head(pooled))
    _, state = model.focus(x, state)
    assert torch.allclose(model.encoder_logits(state), model.local_encoder.head(state.pooled))
    assert not torch.allclose(model.global_encoder.head.weight, model.local_encoder.head.weight)
    with pytest.raises(ValueError, match="encoder_heads"):
        tiny(encoder_heads=False).encoder_logits(state)


def test_heads_dropout_and_drop_connect_leave_inference_alone():
    """Inference logits do not depend on the training-only parts."""
    x = torch.randn(4, 3, 64, 64)
    plain = tiny(encoder_heads=False).eval().anytime(x)
    regularised = tiny(dropout=0.5).eval()
    regularised.load_state_dict({**tiny(encoder_heads=False).state_dict(), **_heads(regularised)})
    assert torch.equal(regularised.anytime(x), plain)
    regularised.train()
    logits, _ = regularised.glance(x)
    reference, _ = regularised.eval().glance(x)
    assert not torch.allclose(logits, reference)  # dropout acts in training


def _heads(model: GFNet) -> dict:
    return {k: v for k, v in model.state_dict().items() if ".fc." in k and "encoder" in k}


def test_mobilenet_drop_connect_is_stochastic_depth_in_training_only():
    torch.manual_seed(0)
    cfg = GFNetConfig(backbone="mobilenetv3_large_100", num_classes=4, input_size=64, patch_size=32, T=2)
    model = GFNet(cfg)
    assert model.config.dropout == 0.2 and model.config.drop_connect == 0.2  # the family's defaults
    rates = [b.drop_path for stage in model.global_encoder.blocks[:-1] for b in stage]
    assert rates[0] == 0 and rates == sorted(rates) and 0 < rates[-1] < 0.2
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    first, second = model.anytime(x), model.anytime(x)
    assert torch.equal(first, second)


def test_policy_input_is_detached_from_the_encoders():
    model = tiny().train()
    x = torch.randn(2, 3, 64, 64)
    _, state = model.glance(x)
    model.locate(state).action.sum().backward()
    assert all(p.grad is None for p in model.global_encoder.parameters())
    assert any(p.grad is not None for p in model.policy.parameters())


@pytest.mark.parametrize("arch", ["resnet50", "mobilenetv3_large_100"])
def test_official_import_keeps_both_encoder_heads(tmp_path, arch):
    import gfpipe

    T = 5 if arch == "resnet50" else 3
    raw = official_checkpoint(arch, 96, T)
    torch.save(raw, tmp_path / "official.pth.tar")
    model = gfpipe.load_checkpoint(str(tmp_path / "official.pth.tar"))
    head = "fc" if arch == "resnet50" else "classifier"
    assert torch.equal(model.local_encoder.head.weight, raw["model_state_dict"][f"module.{head}.weight"])
    assert torch.equal(model.global_encoder.head.weight, raw["model_prime_state_dict"][f"module.{head}.weight"])


def test_the_glance_runs_channels_last_in_inference_and_keeps_training_numerics():
    """Inference lays the glance out channels-last (faster convolutions); training keeps NCHW, so
    its rounding is what the training recipes were tuned with. The values are the same."""
    model = tiny().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        inference = model.glance_input(x)
    training = model.glance_input(x)
    assert inference.is_contiguous(memory_format=torch.channels_last)
    assert training.is_contiguous() and not training.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(inference, training)
