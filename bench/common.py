"""Shared helpers for benchmarks: the machine description and the results file."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model, cores, and library versions: figures only compare within one machine."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=str(torch.__version__), torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(name: str, figures: dict, goals: dict | None = None) -> Path:
    """Write bench/results/NAME.json with the figures, their goals, the machine and the command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "figures": figures,
        "goals": goals or {},
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
