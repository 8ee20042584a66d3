"""Patch proposal network pi: where to look next, from the last step's feature map.

Layout and key names follow the official GFNet policy (`state_encoder`, `gru`, `actor`,
`critic`). Two state encoders exist: the flatten form (ResNets: flatten -> Linear -> ReLU ->
Linear -> ReLU) and the conv form (MobileNet: 1x1 conv -> ReLU -> flatten -> Linear -> ReLU).
The actor's sigmoid output is the action mean in [0, 1]^2 (row, column of the patch's top-left
corner as a fraction of the free range); at inference the mean is the action. The critic is
used by PPO training only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class PolicyOutput(NamedTuple):
    action: Tensor  # (N, 2) in [0, 1]: the patch location used by the next focus step
    value: Tensor  # (N, 1) critic estimate (training only)
    hidden: Tensor  # (N, H) new policy GRU hidden


class PatchPolicy(nn.Module):
    def __init__(
        self,
        map_channels: int,
        map_size: int,
        hidden: int,
        conv_channels: int | None,
        mlp_width: int = 2048,
    ):
        super().__init__()
        self.hidden = hidden
        self.conv = conv_channels is not None
        if self.conv:
            self.state_encoder = nn.Sequential(
                nn.Conv2d(map_channels, conv_channels, 1, bias=False),
                nn.ReLU(inplace=True),
                nn.Flatten(),
                nn.Linear(conv_channels * map_size * map_size, hidden),
                nn.ReLU(inplace=True),
            )
        else:
            self.state_encoder = nn.Sequential(
                nn.Linear(map_channels * map_size * map_size, mlp_width),
                nn.ReLU(inplace=True),
                nn.Linear(mlp_width, hidden),
                nn.ReLU(inplace=True),
            )
        self.gru = nn.GRU(hidden, hidden)
        self.actor = nn.Sequential(nn.Linear(hidden, 2), nn.Sigmoid())
        self.critic = nn.Sequential(nn.Linear(hidden, 1))

    def init_state(self, n: int, like: Tensor) -> Tensor:
        return like.new_zeros(n, self.hidden)  # (N, H)

    def forward(self, fmap: Tensor, hidden: Tensor) -> PolicyOutput:
        """fmap (N, C, h, w) of the previous step, hidden (N, H) -> action mean, value, hidden."""
        x = fmap if self.conv else torch.flatten(fmap, 1)
        x = self.state_encoder(x)  # (N, H)
        out, new_hidden = self.gru(x.unsqueeze(0), hidden.unsqueeze(0).contiguous())  # (1, N, H)
        out = out[0]
        return PolicyOutput(self.actor(out), self.critic(out), new_hidden[0])


# ---------------------------------------------------------------------------------------------
# The action distribution (training)
# ---------------------------------------------------------------------------------------------


def sample_action(mean: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """A location drawn from the Gaussian N(mean, std^2 I) around the actor's mean (N, 2), clamped
    to [0, 1] (the official rollout's rule; the clamped action is what is stored and scored)."""
    where = generator.device if generator is not None else mean.device
    noise = torch.randn(mean.shape, generator=generator, device=where).to(mean.device, mean.dtype)
    return (mean + std * noise).clamp_(0.0, 1.0)


def action_log_prob(mean: Tensor, action: Tensor, std: float) -> Tensor:
    """log N(action; mean, std^2 I) summed over the two coordinates: (N, 2), (N, 2) -> (N,)."""
    z = (action - mean) / std
    return (-0.5 * z.pow(2) - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)


def action_entropy(std: float) -> float:
    """Entropy of the 2-d Gaussian with a fixed std: a constant, so it adds no gradient (as in the
    official code); kept so the loss reads like the paper's."""
    return 2 * (0.5 + 0.5 * math.log(2 * math.pi) + math.log(std))
