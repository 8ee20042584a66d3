import pytest
import torch

from gfpipe.config import ConfigError
from gfpipe.model import GFNet, GFNetConfig, GFState
from gfpipe.model.policy import PolicyOutput


def tiny(**kw) -> GFNet:
    torch.manual_seed(0)
    cfg = dict(backbone="tiny", tiny_width=4, num_classes=7, input_size=64, patch_size=32, T=4)
    cfg.update(kw)
    return GFNet(GFNetConfig(**cfg)).eval()


def images(n: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("classifier", ["gru", "cascade"])
def test_anytime_is_the_sequence_of_steps(classifier):
    model = tiny(classifier=classifier)
    x = images(3)
    logits, actions = model.anytime(x, return_locations=True)
    assert logits.shape == (4, 3, 7) and actions.shape == (3, 3, 2)
    assert ((actions >= 0) & (actions <= 1)).all()
    step_logits, state = model.glance(x)
    assert torch.equal(step_logits, logits[0])
    for t in range(1, 4):
        step_logits, state = model.focus(x, state)
        assert torch.allclose(step_logits, logits[t], atol=1e-6)
    assert state.step == 4 and torch.allclose(state.glimpses, actions.transpose(0, 1))


@torch.no_grad()
@pytest.mark.parametrize("classifier", ["gru", "cascade"])
def test_images_from_different_batches_share_a_later_step(classifier):
    """Take continuing images out of two batches, stack them, focus together: same result."""
    model = tiny(classifier=classifier)
    a, b = images(4, seed=2), images(5, seed=3)
    ref_a, ref_b = model.anytime(a), model.anytime(b)
    _, state_a = model.glance(a)
    _, state_b = model.glance(b)
    keep_a = torch.tensor([True, False, True, False])
    keep_b = torch.tensor([1, 4])
    pooled = GFState.cat([state_a.index(keep_a), state_b.index(keep_b)])
    pool_images = torch.cat([a[keep_a], b[keep_b]])
    logits, pooled = model.focus(pool_images, pooled)
    logits, pooled = model.focus(pool_images, pooled)
    expected = torch.cat([ref_a[2][keep_a], ref_b[2][keep_b]])
    assert torch.allclose(logits, expected, atol=1e-5)
    assert len(pooled) == 4 and pooled.glimpses.shape == (4, 2, 2)


@torch.no_grad()
def test_focus_uses_a_given_location():
    model = tiny()
    x = images(2)
    _, state = model.glance(x)
    location = model.locate(state)
    corner = PolicyOutput(torch.zeros(2, 2), location.value, location.hidden)
    _, s1 = model.focus(x, state, corner)
    assert torch.equal(s1.glimpses[:, 0], torch.zeros(2, 2))
    # Same action as the policy's mean gives the same result as letting the policy choose.
    l_default, _ = model.focus(x, state)
    l_given, _ = model.focus(x, state, location)
    assert torch.equal(l_default, l_given)


@torch.no_grad()
def test_single_step_model_and_small_inputs():
    model = tiny(T=1, input_size=48, patch_size=24)
    logits, actions = model.anytime(images(2, 48), return_locations=True)
    assert logits.shape == (1, 2, 7) and actions.shape == (0, 2, 2)


@torch.no_grad()
def test_glance_size_other_than_patch_size():
    model = tiny(input_size=128, patch_size=64, glance_size=60)  # both give a 2x2 map
    assert model.anytime(images(2, 128)).shape == (4, 2, 7)


def test_errors_say_what_is_wrong():
    model = tiny()
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 64, 64\)"):
        model.glance(torch.zeros(1, 3, 32, 32))
    _, state = model.glance(images(1))
    with pytest.raises(ValueError, match="cannot stack states at different steps"):
        GFState.cat([state, model.focus(images(1), state)[1]])
    with pytest.raises(ConfigError, match="known backbones"):
        GFNet(GFNetConfig(backbone="vgg"))
    with pytest.raises(ConfigError, match="policy reads both"):
        GFNet(GFNetConfig(input_size=224, patch_size=96, glance_size=128))
    with pytest.raises(ConfigError, match="patch_size 300"):
        GFNet(GFNetConfig(patch_size=300))
    done = tiny(T=1)
    _, state = done.glance(images(1))
    with pytest.raises(ValueError, match="all T=1 steps"):
        done.focus(images(1), state)
