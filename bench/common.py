"""Shared helpers for benchmarks: the machine description, the results file, the benchmarked
GFNet configurations."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Variant:
    """One benchmarked GFNet configuration: backbone, patch size, steps, input size."""

    label: str  # as BENCHMARKS.md names the backbone
    arch: str
    patch: int
    T: int
    input_size: int = 224

    def __str__(self) -> str:
        size = f" (input {self.input_size})" if self.input_size != 224 else ""
        return f"{self.label} p{self.patch} T{self.T}{size}"


# One variant of each backbone family (`--family NAME` in costs.py and engine.py): the
# configurations of the official GFNet checkpoints.
FAMILIES = {
    "resnet": Variant("ResNet-50", "resnet50", 96, 5),
    "mobilenetv3": Variant("MobileNet-V3-Large", "mobilenetv3_large_100", 96, 3),
    "mobilenetv3_125": Variant("MobileNet-V3-Large 1.25", "mobilenetv3_large_125", 128, 3),
    "densenet": Variant("DenseNet-121", "densenet121", 96, 5),
    "regnety": Variant("RegNet-Y-600MF", "regnety_600m", 96, 5),
    "efficientnet": Variant("EfficientNet-B2", "efficientnet_b2", 128, 4, input_size=260),
}


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


def calibrate_batchnorm(model, forward) -> None:
    """Re-estimate every BatchNorm's running statistics from the activations of `forward()`.

    `randomize_weights` draws BN statistics that do not match what the layers really see; in deep
    stacks of squeeze-excite blocks (EfficientNet) what differs between images then shrinks
    layer by layer until every image gets the same logits, and every image exits at the same
    step. Normalising each layer by its real statistics (as training leaves them) keeps them
    apart. Only the BN layers switch to training mode (dropout and stochastic depth stay off);
    `forward` should see a few dozen images.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every call of forward()
        m.train()
    try:
        with torch.no_grad():
            forward()
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.eval()
