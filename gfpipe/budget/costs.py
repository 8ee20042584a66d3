"""What each GFNet step costs: Multiply-Adds counted by torch's FLOP counter, and measured seconds.

Costs are counted, never typed in: each part (glance encoder, local encoder, classifier step t,
policy step) runs once under `torch.utils.flop_counter.FlopCounterMode` on the `meta` device,
so counting a ResNet-50 takes no real compute. MACs = FLOPs / 2. Resizing, softmax and
element-wise ops are not counted (as in the paper's figures).

Exiting after step t costs C_t = glance + cls_1 + sum_{s=2..t} (policy + local + cls_s): the
policy that picks step s's patch runs only for images that take step s. cls_t is what
`GFNet.classify` runs at step t (for RegNet's glance: the global encoder's head and the GRU update).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from gfpipe.model.gfnet import GFNet, GFNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartCosts:
    """MACs of one call of each part, for one image."""

    glance_encoder: float
    local_encoder: float
    policy: float
    classifier: tuple[float, ...]  # step 1..T (the cascade grows with t; the GRU does not)

    def cumulative(self) -> list[float]:
        """C_1..C_T: MACs spent on an image that exits after step t."""
        costs = [self.glance_encoder + self.classifier[0]]
        for t in range(1, len(self.classifier)):
            costs.append(costs[-1] + self.policy + self.local_encoder + self.classifier[t])
        return costs


def _macs(fn, *args) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2.0


@functools.lru_cache(maxsize=64)
def _part_costs(config: GFNetConfig) -> PartCosts:
    with torch.device("meta"):
        model = GFNet(config)
    model.eval()
    cfg = model.config
    meta = torch.device("meta")
    glance = _macs(model.global_encoder, torch.zeros(1, 3, cfg.glance_size, cfg.glance_size, device=meta))
    local = _macs(model.local_encoder, torch.zeros(1, 3, cfg.patch_size, cfg.patch_size, device=meta))
    features = torch.zeros(1, model.global_encoder.feature_dim, device=meta)
    state = model.classifier.init_state(1, features)
    classifier = []
    for t in range(1, cfg.T + 1):
        with FlopCounterMode(display=False) as counter:
            _, state = model.classify(features, state, t)
        classifier.append(counter.get_total_flops() / 2.0)
    side = model.local_encoder.map_size(cfg.patch_size)
    fmap = torch.zeros(1, model.local_encoder.map_channels, side, side, device=meta)
    policy = _macs(model.policy, fmap, model.policy.init_state(1, fmap)) if cfg.T > 1 else 0.0
    return PartCosts(glance, local, policy, tuple(classifier))


def part_costs(model_or_config: GFNet | GFNetConfig) -> PartCosts:
    """Per-part MACs of a model (counted once per architecture, then cached)."""
    cfg = model_or_config.config if isinstance(model_or_config, GFNet) else model_or_config
    return _part_costs(cfg.resolved())


def step_costs(model_or_config: GFNet | GFNetConfig) -> list[float]:
    """Cumulative MACs for one image exiting after step 1..T."""
    return part_costs(model_or_config).cumulative()


@torch.no_grad()
def measure_step_seconds(
    model: GFNet,
    batch_size: int,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> list[float]:
    """Cumulative seconds per image for exiting after step 1..T, measured at `batch_size`.

    Each step is timed on full batches on `device` (the median of `repeats` runs, after
    `warmup`), so the figures include the batch efficiency the engine will actually see.
    Used to turn a wall-clock budget into thresholds.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, cfg.input_size, cfg.input_size, generator=gen).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn):
        times = []
        out = None
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = fn()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2], out

    seconds, (_, state) = timed(lambda: model.glance(images))
    per_step = [seconds]
    for _ in range(1, cfg.T):
        seconds, (_, state) = timed(lambda prev=state: model.focus(images, prev))
        per_step.append(seconds)
    cumulative = []
    total = 0.0
    for s in per_step:
        total += s / batch_size
        cumulative.append(total)
    return cumulative


def format_macs(value: float) -> str:
    """1.23e9 -> '1.23G' (K/M/G/T/P suffixes)."""
    for suffix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"
