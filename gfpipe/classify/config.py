"""The classify job's settings: one frozen dataclass, saved resolved in the run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gfpipe.budget.grammar import Budget
from gfpipe.data.shards import ReadOptions


@dataclass(frozen=True)
class ClassifyConfig:
    """What to classify, where to write it, the budget, and how to run the model.

    `budget` is the user's budget (mean per image, total, or wall-clock). `calibrate` > 0 solves
    the first thresholds on that many images sampled from the input instead of the checkpoint's
    calibration (their all-steps cost counts against the budget). `batch_size` is the model batch;
    each actor call holds `batches_per_call` of them (the pool of hard images to requeue across;
    by default 32 on GPUs, where calls of 32 batches ran ResNet-50 3.2x faster than calls of 2,
    and 4 on CPUs, where the job ran 29% faster than with 2 and no faster with 8 or 16).
    `replicas` None sizes the actor pool from the cluster (`replicas_per_gpu` per GPU; on CPU,
    what leaves a CPU for reading). Two replicas per GPU let one replica's host work (decoding
    hand-off, exit bookkeeping, writing) overlap the other's kernels: the engine alone kept an
    H200 busy only 29% of the time (BENCHMARKS.md). `device` auto uses GPUs when the cluster has them.
    """

    input: str
    output: str
    budget: Budget
    checkpoint: str = "demo"
    checkpoint_overrides: dict[str, Any] = field(default_factory=dict)
    read_options: ReadOptions = field(default_factory=ReadOptions)
    storage_options: dict[str, Any] | None = None
    calibrate: int = 0
    overwrite: bool = False
    batch_size: int | None = None  # None: 256 on GPUs, 64 on CPUs
    batches_per_call: int | None = None  # None: 32 on GPUs, 4 on CPUs (bench/pipeline.py)
    replicas: int | None = None
    cpus_per_replica: float | None = None
    replicas_per_gpu: int = 1
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    top_k: int = 5
    shadow_share: float = 0.05
    seed: int = 0
    progress_seconds: float = 10.0
    stall_seconds: float = 900.0  # no image finished for this long: fail (0: wait forever)
    report_samples: int = 8
    address: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "batches_per_call", "top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.calibrate < 0:
            raise ValueError(f"calibrate must be >= 0 images, got {self.calibrate}")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"replicas must be >= 1 when given, got {self.replicas}")
        if self.cpus_per_replica is not None and self.cpus_per_replica <= 0:
            raise ValueError(f"cpus_per_replica must be > 0 when given, got {self.cpus_per_replica}")
        if self.replicas_per_gpu < 1:
            raise ValueError(f"replicas_per_gpu must be >= 1, got {self.replicas_per_gpu}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0 <= self.shadow_share < 0.5:
            raise ValueError(f"shadow_share must be in [0, 0.5), got {self.shadow_share}")
        if self.stall_seconds < 0:
            raise ValueError(f"stall_seconds must be >= 0 (0: never), got {self.stall_seconds}")
        if self.progress_seconds <= 0:
            raise ValueError(f"progress_seconds must be > 0, got {self.progress_seconds}")
