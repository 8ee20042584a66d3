"""Build official-format GFNet checkpoint files from the reference's deterministic weights.

The rule comes from shared/reference/official_gfnet/README.md; the key lists and shapes come
from its checkpoint_keys.json, not from gfpipe's modules, so a layout mistake in gfpipe shows up
as a load error here rather than being mirrored.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "official_gfnet"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reference_vectors(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


def official_key_shapes(arch: str) -> dict[str, dict[str, list[int]]]:
    """{part: {key: shape}} for the encoder, fc and policy of `arch` (patch 96)."""
    spec = json.loads((REFERENCE / "checkpoint_keys.json").read_text())[arch]
    encoder = next(v for k, v in spec.items() if k.startswith("model_state_dict"))
    return {"encoder": encoder, "fc": spec["fc"], "policy": spec["policy"]}


def deterministic_tensor(salt: str, key: str, shape: list[int]) -> torch.Tensor:
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


def official_checkpoint(arch: str, patch_size: int = 96, T: int = 5, metadata: bool = True) -> dict:
    """An official-format checkpoint dict with the reference's deterministic weights."""
    shapes = official_key_shapes(arch)

    def part(salt: str, keys: dict[str, list[int]], prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + k: deterministic_tensor(salt, k, s) for k, s in keys.items()}

    ckpt = {
        "model_state_dict": part("", shapes["encoder"], "module."),
        "model_prime_state_dict": part("prime.", shapes["encoder"], "module."),
        "fc": part("fc.", shapes["fc"]),
        "policy": part("policy.", shapes["policy"]),
    }
    if metadata:
        ckpt.update(model_name=arch, patch_size=patch_size, flops=[float(t) for t in range(1, T + 1)])
    return ckpt


def reference_input(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 224, 224, generator=g)
    return (x - MEAN) / STD
