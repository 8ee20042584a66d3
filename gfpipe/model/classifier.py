"""Classifiers f_C that turn the pooled features of steps 1..t into logits at step t.

Both keep a per-image state tensor (first dim = images), so images from different batches can be
stacked together at a later step:
- `GRUClassifier` (ResNets, the paper's `fc_rnn`): a one-layer GRU over the step features;
  state = GRU hidden (N, hidden).
- `CascadeClassifier` (MobileNet/EfficientNet in the paper): step t has its own linear layer on
  the concatenated features of steps 1..t; state = that concatenation (N, t * F).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GRUClassifier(nn.Module):
    """Keys `rnn.*`, `fc.*` as in the official `fc` state dict."""

    def __init__(self, feature_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.rnn = nn.GRU(feature_dim, hidden)
        self.fc = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def init_state(self, n: int, like: Tensor) -> Tensor:
        return like.new_zeros(n, self.hidden)  # (N, H)

    def step(self, features: Tensor, state: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """features (N, F), state (N, H), step counted from 1 -> logits (N, K), new state (N, H)."""
        out, hidden = self.rnn(features.unsqueeze(0), state.unsqueeze(0).contiguous())  # (1, N, H)
        return self.fc(out[0]), hidden[0]

    def update(self, features: Tensor, state: Tensor) -> Tensor:
        """The new state (N, H) without the logits, for a step whose logits come from elsewhere
        (`GFNetConfig.glance_logits`): the GRU still takes the step's features in."""
        _, hidden = self.rnn(features.unsqueeze(0), state.unsqueeze(0).contiguous())  # (1, N, H)
        return hidden[0]


class CascadeClassifier(nn.Module):
    """`fc_1` on step-1 features, `fc_t` (Linear(t * F, K)) on the concatenation of steps 1..t."""

    def __init__(self, feature_dim: int, num_classes: int, steps: int):
        super().__init__()
        self.feature_dim = feature_dim
        for t in range(1, steps + 1):
            self.add_module(f"fc_{t}", nn.Linear(t * feature_dim, num_classes))

    def init_state(self, n: int, like: Tensor) -> Tensor:
        return like.new_zeros(n, 0)  # (N, 0): nothing seen yet

    def step(self, features: Tensor, state: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """features (N, F), state (N, (step-1) * F) -> logits (N, K), new state (N, step * F)."""
        state = torch.cat([state, features], dim=1)
        return getattr(self, f"fc_{step}")(state), state

    def update(self, features: Tensor, state: Tensor) -> Tensor:
        """The new state (N, step * F) without the logits (see `GRUClassifier.update`)."""
        return torch.cat([state, features], dim=1)
