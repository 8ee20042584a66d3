"""Shared helpers for benchmarks: the machine description and the results file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model, cores, and library versions: figures only compare within one machine."""
    cpu = platform.processor() or platform.machine() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    for module in ("numpy", "PIL"):
        with contextlib.suppress(ImportError):
            info[module.lower().replace("pil", "pillow")] = __import__(module).__version__
    try:
        import torch

        info.update(torch=str(torch.__version__), torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(name: str, figures: dict, goals: dict | None = None) -> Path:
    """Write bench/results/NAME.json: the figures (top-level keys), their goals, the machine, the command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        **figures,
        "goals": goals or {},
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def randomize_weights(model, seed: int = 0) -> None:
    """Give every tensor of `model` varied, well-scaled random values (BN statistics included).

    Freshly initialised networks give near-identical outputs for every image (a ResNet's
    confidences differ by 1e-4), which makes every image exit at the same step. Timing does not
    depend on the values, but the exit histogram does; these weights spread confidences the way
    a trained model does.
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(1 + 0.5 * torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                t.copy_(base + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(max(1, t[0].numel())))
