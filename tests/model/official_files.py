"""Build official-format GFNet checkpoint files from the reference's deterministic weights.

The rules (weight rule 1, and rule 2 for MobileNet-V3 and EfficientNet) come from
shared/reference/official_gfnet/README.md; the key lists and shapes come from its
checkpoint_keys.json, not from gfpipe's modules, so a layout mistake in gfpipe shows up as a load
error here rather than being mirrored.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from pathlib import Path

import pytest
import torch

import gfpipe
from gfpipe.budget.scores import exit_scores
from gfpipe.engine import EarlyExitEngine
from gfpipe.model import patch_corners

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "official_gfnet"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# The patch size of checkpoint_keys.json's policy shapes (README): 128 for these archs, else 96.
KEYS_PATCH = {"mobilenetv3_large_125": 128, "efficientnet_b2": 128, "efficientnet_b3": 128}


def reference_vectors(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


def official_key_shapes(arch: str, patch_size: int | None = None) -> dict[str, dict[str, list[int]]]:
    """{part: {key: shape}} for the encoder, fc and policy of `arch`, with the policy shapes for
    `patch_size` (default: the patch the file lists them for, KEYS_PATCH)."""
    spec = json.loads((REFERENCE / "checkpoint_keys.json").read_text())[arch]
    encoder = next(v for k, v in spec.items() if k.startswith("model_state_dict"))
    policy = dict(spec["policy"])
    if patch_size is not None:
        # Only the policy's linear layer after the flatten depends on the patch: its input is
        # C * ceil(p/32)^2 (`state_encoder.3` after the conv, else `state_encoder.0`).
        key = "state_encoder.3.weight" if "state_encoder.3.weight" in policy else "state_encoder.0.weight"
        rows, cols = policy[key]
        listed = math.ceil(KEYS_PATCH.get(arch, 96) / 32) ** 2
        policy[key] = [rows, cols // listed * math.ceil(patch_size / 32) ** 2]
    return {"encoder": encoder, "fc": spec["fc"], "policy": policy}


def deterministic_tensor(salt: str, key: str, shape: list[int], rule: int = 1) -> torch.Tensor:
    value = _rule1_tensor(salt, key, shape)
    if rule == 2:  # rule 1, then conv kernels * 1.35 and squeeze-excite gate biases + 2
        if len(shape) == 4:
            return value * 1.35
        if key.endswith("conv_expand.bias"):
            return value + 2
    return value


def _rule1_tensor(salt: str, key: str, shape: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32((salt + key).encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if key.endswith("running_var"):
        return 1 + 0.5 * torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1 and key.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 0.05 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


def official_checkpoint(arch: str, patch_size: int = 96, T: int = 5, metadata: bool = True, rule: int = 1) -> dict:
    """An official-format checkpoint dict with the reference's deterministic weights (rule 1 or 2)."""
    shapes = official_key_shapes(arch, patch_size)

    def part(salt: str, keys: dict[str, list[int]], prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + k: deterministic_tensor(salt, k, s, rule) for k, s in keys.items()}

    ckpt = {
        "model_state_dict": part("", shapes["encoder"], "module."),
        "model_prime_state_dict": part("prime.", shapes["encoder"], "module."),
        "fc": part("fc.", shapes["fc"]),
        "policy": part("policy.", shapes["policy"]),
    }
    if metadata:
        ckpt.update(model_name=arch, patch_size=patch_size, flops=[float(t) for t in range(1, T + 1)])
    return ckpt


def reference_input(seed: int, n: int, size: int = 224) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return (x - MEAN) / STD


def reference_model(vectors: str):
    """(model loaded from an official file of `vectors`' arch/patch/T/rule, its input, the vectors)."""
    ref = reference_vectors(vectors)
    buf = io.BytesIO()
    torch.save(official_checkpoint(ref["arch"], ref["patch_size"], ref["T"], rule=ref.get("rule", 1)), buf)
    model = gfpipe.load_checkpoint(buf.getvalue())
    return model, reference_input(ref["seed"], ref["n"], ref.get("image_size", 224)), ref


def assert_engine_matches_reference(vectors: str) -> None:
    """The early-exit engine on an imported official file gives the official forward pass's
    answers: the image with the higher step-1 exit score leaves after the glance, the other
    runs all T steps; labels, confidences and patch corners are those of the vectors."""
    model, x, ref = reference_model(vectors)
    log_softmax = torch.tensor(ref["log_softmax"])  # (T, n, K)
    scores = exit_scores(log_softmax)  # (T, n): log-odds are shift-invariant, so logits' scores
    first, second = scores[0].tolist()
    assert abs(first - second) > 1e-3, "the vectors' two images need distinct step-1 scores"
    eta = [0.5 * (first + second)] + [float("inf")] * (ref["T"] - 1)
    rows = {r["key"]: r for r in EarlyExitEngine(model, eta, batch_size=2).run([([0, 1], x)])}
    cfg = model.config
    for i in range(ref["n"]):
        t = 1 if scores[0, i] >= eta[0] else ref["T"]
        row = rows[i]
        assert row["error"] is None and row["exit_step"] == t
        assert row["label"] == ref["argmax"][t - 1][i]
        assert row["confidence"] == pytest.approx(log_softmax[t - 1, i].max().exp().item(), rel=1e-3)
        actions = torch.tensor(ref["actions"])[: t - 1, i]  # (t-1, 2)
        assert row["glimpses"] == patch_corners(actions, cfg.input_size, cfg.patch_size).tolist()


def assert_official_file_loads_and_runs(arch: str, head_key: str, map_channels: int) -> gfpipe.GFNet:
    """An official file of `arch` built from checkpoint_keys.json (not gfpipe's modules) loads
    strictly, keeps the global encoder's head (`head_key` in the prime state dict), and a glance
    and a focus step on one 224 px image give finite (1, 1000) logits; returns the model."""
    raw = official_checkpoint(arch, patch_size=96, T=3)
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    model = gfpipe.load_checkpoint(buffer.getvalue())
    assert model.config.T == 3
    assert torch.equal(model.global_encoder.head.weight, raw["model_prime_state_dict"][f"module.{head_key}"])
    x = reference_input(0, 1)
    with torch.no_grad():
        logits, state = model.glance(x)
        assert state.features.shape == (1, map_channels, 3, 3)
        logits2, state = model.focus(x, state)
    assert logits.shape == logits2.shape == (1, 1000)
    assert torch.isfinite(logits).all() and torch.isfinite(logits2).all() and state.step == 2
    return model
