"""Capacity planning for the classify job: what a budget costs, how fast it runs, how many devices.

`gfpipe plan` is built on this module (docs/capacity-planning.md is the user's guide). The model,
from the budget to the wall clock:

- Exits. The job's controller runs a shadow share s of images for all T steps and aims the rest
  at (B' - s C_T) / (1 - s), B' = B (1 - margin); `expected_exits` solves that aim on the
  checkpoint's calibration scores (`solve_thresholds`) and returns the exit shares q_t, the
  expected mean cost and, when the calibration has labels, the expected accuracy.
- Model. m = sum_t q_t S_t seconds per image for one replica, S_t the cumulative seconds per
  image of exiting after step t, measured on full batches (`measure_step_seconds`) or given.
- Engine. The engine reaches a share eta of that full-batch speed in calls like the actor's (the
  partial batches each call flushes, host work per step); `probe_engine` measures eta with the
  real engine. Inside the job the actor also builds rows, writes Parquet parts and syncs the
  budget ledger after every batch: `JobCosts.actor_seconds` more per image. One replica then
  spends a = m / eta + actor_seconds per image.
- Node. `node_pool` sizes a node's replicas as the job does (`gfpipe.pipeline.pool_shape`). Its
  steady rate is the least of: replicas / a (the model), gpus / m when replicas share GPUs
  (their host work overlaps, their kernels do not), read_tasks / d (reading, d the seconds a read
  task spends per image), and cores / (a x threads + d + pipeline_core) (the node's cores: on a
  CPU node the replicas, the read tasks and Ray's own work share them; a GPU replica still keeps
  one core busy with its host work).
- Job. seconds = fixed_seconds + images / (devices x rate per device), devices being GPUs or CPU
  replicas; they scale linearly (each node brings its own replicas and read tasks).

The constants of `JobCosts` were measured on a 2-core machine by `bench/plan.py --calibrate`;
everything else is measured on the device at hand (or given) when `gfpipe plan` runs. No Ray
here: cluster shapes are arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gfpipe.budget.grammar import as_costs, format_amount, format_duration
from gfpipe.budget.solver import exit_fractions, simulate, solve_thresholds

log = logging.getLogger(__name__)

SHADOW_SHARE = 0.05  # ClassifyConfig.shadow_share: images that run all T steps for the controller
MARGIN = 0.002  # BudgetController's default margin: the job aims this share under the budget

# Full-batch speed the engine reaches when it is not probed (`--step-seconds`, `--images-per-s`):
# bench/engine.py's batch efficiency (BENCHMARKS.md): ResNet-50 p96 T5 on CPU 0.967 (batch 16) and
# 0.968 (batch 32), MobileNet-V3 0.957; on an H100 in bf16 at batch 256, ResNet-50 0.714 (host
# work per step dominates there), MobileNet-V3 0.589.
ENGINE_EFFICIENCY = {"cpu": 0.96, "cuda": 0.71}

# The job's own costs beyond the model and decoding, measured on a 2-core AMD EPYC (torch 2.13 CPU,
# Ray 2.60, the demo model) by `bench/plan.py --calibrate`: classify runs of 2,000 and 16,000 glyph
# images (shards of 500) at 9 MMACs with Ray already up (as under `ray job submit`), 3 rounds,
# medians (2026-11-27, after the start-up fixes). elapsed = fixed + images / rate gave rate 1688
# images/s [1648-1767] and fixed 2.61 s [2.57-2.88]; the actor then spent 0.18 ms [0.15-0.18] per
# image beyond the engine's own 0.41 ms (probed in the same rounds), and every process but the
# actor used 0.21 ms [0.20-0.24] of CPU per image beyond the 0.20 ms that decoding took (from
# /proc, the difference between the two sizes).
FIXED_SECONDS = 2.6  # start (list and count shards, Ray Data, the actor loading torch and the model) + finish
ACTOR_SECONDS = 0.00018  # per image in the actor beyond its engine: rows, Parquet parts, ledger round trips
PIPELINE_CORE_SECONDS = 0.00021  # per image, core-seconds of the driver, the ledger, Ray and block transfers


@dataclasses.dataclass(frozen=True)
class JobCosts:
    """The classify job's costs besides the model: fixed seconds per run, seconds per image in the
    actor beyond its engine, core-seconds per image of everything else but decoding, and the
    seconds a read task spends per image (`decode_seconds`, None when not known: not counted)."""

    fixed_seconds: float = FIXED_SECONDS
    actor_seconds: float = ACTOR_SECONDS
    pipeline_core_seconds: float = PIPELINE_CORE_SECONDS
    decode_seconds: float | None = None
    decode_source: str = "not measured"

    def __post_init__(self) -> None:
        for name in ("fixed_seconds", "actor_seconds", "pipeline_core_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.decode_seconds is not None and not (math.isfinite(self.decode_seconds) and self.decode_seconds > 0):
            raise ValueError(f"decode_seconds must be > 0 when given, got {self.decode_seconds}")


# ----------------------------------------------------------------------------- exits


@dataclasses.dataclass(frozen=True)
class Exits:
    """What a budget does on the calibration data, as the job's controller aims it.

    `shares` (T,) are the shares of images exiting after each step (the shadow share included at
    T); `mean_macs` the expected realized cost per image; `accuracy` None without labels.
    """

    budget: float
    mean_macs: float
    shares: tuple[float, ...]
    shadow_share: float
    thresholds: tuple[float, ...]
    accuracy: float | None
    calibration_images: int

    def seconds_per_image(self, step_seconds: Sequence[float]) -> float:
        """sum_t q_t S_t: the model's seconds per image at full batches."""
        s = np.asarray(step_seconds, np.float64)
        return float(np.dot(self.shares, s))


def feasible_shadow_share(costs: Sequence[float], budget: float, share: float = SHADOW_SHARE) -> float:
    """The shadow share the controller uses at `budget`: none at either end of the cost range, at
    most half of (B - C_1) / (C_T - C_1) (BudgetController._feasible_share)."""
    c = as_costs(costs)
    low, high = float(c[0]), float(c[-1])
    if c.size == 1 or math.isclose(budget, low, rel_tol=1e-9) or math.isclose(budget, high, rel_tol=1e-9):
        return 0.0
    return min(share, 0.5 * (budget - low) / (high - low))


def expected_exits(
    costs: Sequence[float],
    scores: Any,
    budget: float,
    predictions: Any = None,
    labels: Any = None,
    shadow_share: float = SHADOW_SHARE,
    margin: float = MARGIN,
) -> Exits:
    """Exit shares, mean cost and accuracy of `budget` (mean MACs per image) on calibration data.

    The job's controller aims B' = B (1 - margin) and runs `shadow_share` of the images for all T
    steps; the other images get thresholds solved for (B' - s C_T) / (1 - s) on the calibration
    `scores` (N, T). A budget outside [C_1, C_T] is the solver's error naming both limits.
    Accuracy needs `predictions` (N, T) and `labels` (N,): the thresholds' accuracy
    (`simulate`) for the non-shadow images, step T's for the shadow ones.
    """
    c = as_costs(costs)
    exit_fractions(c, budget)  # the range check, with the solver's message
    s = feasible_shadow_share(c, budget, shadow_share)
    low, high = float(c[0]), float(c[-1])
    goal = budget * (1.0 - margin) if not math.isclose(budget, high, rel_tol=1e-9) else budget
    aim = min(max((goal - s * high) / (1.0 - s), low), high)
    solution = solve_thresholds(c, scores, aim)
    sim = simulate(scores, solution.thresholds, c, predictions, labels)
    shares = (1.0 - s) * sim.fractions
    shares[-1] += s
    accuracy = None
    if sim.accuracy is not None:
        last = np.asarray(predictions)[:, -1] == np.asarray(labels).reshape(-1)
        accuracy = (1.0 - s) * sim.accuracy + s * float(last.mean())
    return Exits(
        budget=float(budget),
        mean_macs=float(np.dot(shares, c)),
        shares=tuple(float(x) for x in shares),
        shadow_share=s,
        thresholds=tuple(float(x) for x in solution.thresholds),
        accuracy=accuracy,
        calibration_images=int(sim.counts.sum()),
    )


def calibration_of(model: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """(scores (N, T), predictions (N, T) or None, labels (N,) or None, source) of a checkpoint's
    calibration data; a ValueError when it holds none."""
    from gfpipe.evaluate import calibration_scores

    scores = calibration_scores(model)
    if scores is None:
        raise ValueError(
            "the checkpoint holds no calibration scores, so the exit shares of a budget are unknown; "
            "calibrate it (gfpipe train does, on held-out data)"
        )
    card = model.card.calibration or {}
    predictions, labels = card.get("predictions"), card.get("labels")
    if predictions is None or labels is None:
        predictions = labels = None
    else:
        predictions, labels = _numpy(predictions), _numpy(labels).reshape(-1)
    return scores, predictions, labels, str(card.get("source") or "the checkpoint's calibration data")


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


# ----------------------------------------------------------------------------- devices and nodes


@dataclasses.dataclass(frozen=True)
class Speed:
    """How fast one model replica runs: cumulative seconds per image at full batches of exiting after
    each step (`step_seconds`), and the share of that speed the engine reaches in the actor's calls
    (`engine_efficiency`), on `device` ("cpu" with `threads` torch threads, or "cuda")."""

    device: str
    step_seconds: tuple[float, ...]
    engine_efficiency: float
    threads: int = 1
    source: str = "given"
    engine_source: str = "given"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        s = np.asarray(self.step_seconds, np.float64)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0) or np.any(np.diff(s) <= 0):
            raise ValueError(
                "step seconds must be positive and increasing (cumulative seconds per image of exiting "
                f"after step 1, 2, ..., T), got {list(self.step_seconds)}"
            )
        if not 0 < self.engine_efficiency <= 1.5:
            raise ValueError(f"engine efficiency must be in (0, 1.5], got {self.engine_efficiency}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def step_seconds_from_rate(costs: Sequence[float], images_per_s: float) -> tuple[float, ...]:
    """Cumulative seconds per image from an all-steps rate, each step taking its share of MACs."""
    if not (math.isfinite(images_per_s) and images_per_s > 0):
        raise ValueError(f"images per second must be positive, got {images_per_s}")
    c = as_costs(costs)
    return tuple(float(x) for x in c / c[-1] / images_per_s)


@dataclasses.dataclass(frozen=True)
class Node:
    """One node as the classify job uses it: `replicas` model replicas (`replicas_per_gpu` per GPU, or
    CPU slices of `cpus_per_replica` CPUs computing with `threads` threads) and `read_tasks` read
    tasks at a time, out of `cpus` CPUs and `gpus` GPUs; batches of `batch_size`,
    `batches_per_call` per actor call. Its `devices` are its GPUs, or on CPU its replicas."""

    device: str
    cpus: float
    gpus: int
    replicas: int
    cpus_per_replica: float
    threads: int
    read_tasks: int
    batch_size: int
    batches_per_call: int
    replicas_per_gpu: int = 1

    @property
    def devices(self) -> int:
        """Devices per node: GPUs, or CPU replicas."""
        return self.gpus if self.device == "cuda" else self.replicas

    @property
    def devices_word(self) -> str:
        return "GPU" if self.device == "cuda" else "CPU replica"


def node_pool(
    device: str,
    cpus: float,
    gpus: int = 0,
    *,
    replicas: int | None = None,
    cpus_per_replica: float | None = None,
    replicas_per_gpu: int = 1,
    batch_size: int | None = None,
    batches_per_call: int | None = None,
) -> Node:
    """The job's pool on one node of `cpus` CPUs and `gpus` GPUs (`gfpipe.pipeline.pool_shape`),
    with the job's default batch sizes (256 x 32 per call on GPUs, 64 x 4 on CPUs)."""
    from gfpipe.budget.grammar import Budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import pool_shape

    config = ClassifyConfig(
        input="-",
        output="-",
        budget=Budget("mean", 1.0),
        device=device,
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        replicas_per_gpu=replicas_per_gpu,
        batch_size=batch_size,
        batches_per_call=batches_per_call,
    )
    shape = pool_shape(config, {"CPU": float(cpus), "GPU": float(gpus)}, [float(cpus)])
    gpu = shape.device == "cuda"
    return Node(
        device=shape.device,
        cpus=float(cpus),
        gpus=int(gpus),
        replicas=shape.replicas,
        cpus_per_replica=shape.cpus_per_replica,
        threads=shape.threads,
        read_tasks=shape.read_tasks,
        batch_size=batch_size or (256 if gpu else 64),
        batches_per_call=batches_per_call or (32 if gpu else 4),
        replicas_per_gpu=replicas_per_gpu if gpu else 1,
    )


@dataclasses.dataclass(frozen=True)
class Rate:
    """A node's steady rate at a budget, and what bounds it.

    `replica_seconds` is a (seconds per image of one replica in the job); `bounds` the node's
    images/s as each side would allow it (the model replicas; on GPUs also the GPUs' own kernel
    time, which replicas sharing a GPU cannot overlap; reading, when decoding was measured or given;
    the cores); `bound` the least of them.
    """

    model_seconds: float
    replica_seconds: float
    bounds: dict[str, float]
    bound: str
    node_images_per_s: float
    per_device_images_per_s: float


BOUND_WORDS = {
    "model": "the model replicas",
    "gpu": "the GPUs' kernel time (replicas share each GPU)",
    "reading": "reading and decoding",
    "cores": "the node's CPU cores (shared by the model, decoding and Ray)",
}


def steady_rate(exits: Exits, speed: Speed, node: Node, job: JobCosts) -> Rate:
    """The node's steady images/s at these exits (see the module doc)."""
    if len(speed.step_seconds) != len(exits.shares):
        raise ValueError(f"{len(speed.step_seconds)} step seconds given for a model of {len(exits.shares)} steps")
    m = exits.seconds_per_image(speed.step_seconds)
    a = m / speed.engine_efficiency + job.actor_seconds
    bounds = {"model": node.replicas / a}
    if node.device == "cuda" and node.replicas > node.gpus:
        bounds["gpu"] = node.gpus / m  # kernels at full batches, the replicas' host work all overlapped
    d = job.decode_seconds
    if d is not None:
        bounds["reading"] = node.read_tasks / d
    model_cores = a * (node.threads if node.device == "cpu" else 1)
    bounds["cores"] = node.cpus / (model_cores + (d or 0.0) + job.pipeline_core_seconds)
    bound = min(bounds, key=bounds.__getitem__)
    rate = bounds[bound]
    return Rate(m, a, bounds, bound, rate, rate / node.devices)


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """The answer of `plan_budget` or `best_budget` (`to_dict` gives it as JSON-ready values)."""

    images: int
    window: float | None
    exits: Exits
    costs: tuple[float, ...]
    speed: Speed
    node: Node
    job: JobCosts
    rate: Rate
    device_hours: float
    devices_needed: int | None
    devices: int | None
    seconds: float | None  # the job's expected wall clock on `devices` (or `devices_needed`)
    mode: str  # "forward" (a budget given) or "best budget" (devices and a window given)

    @property
    def on_devices(self) -> int | None:
        """The devices `seconds` is for: those given, else those needed."""
        return self.devices or self.devices_needed

    @property
    def nodes(self) -> int | None:
        """Nodes like the planned one that hold `on_devices` devices."""
        return None if self.on_devices is None else math.ceil(self.on_devices / self.node.devices)

    def to_dict(self) -> dict[str, Any]:
        node = dataclasses.asdict(self.node)
        return {
            "mode": self.mode,
            "images": self.images,
            "window_s": self.window,
            "budget_macs_per_image": self.exits.budget,
            "expected_macs_per_image": self.exits.mean_macs,
            "step_macs": list(self.costs),
            "exit_shares": list(self.exits.shares),
            "shadow_share": self.exits.shadow_share,
            "thresholds": [_json_float(x) for x in self.exits.thresholds],
            "accuracy": self.exits.accuracy,
            "calibration_images": self.exits.calibration_images,
            "device": self.speed.device,
            "step_seconds": list(self.speed.step_seconds),
            "step_seconds_source": self.speed.source,
            "engine_efficiency": self.speed.engine_efficiency,
            "engine_efficiency_source": self.speed.engine_source,
            "node": node,
            "job_costs": dataclasses.asdict(self.job),
            "model_seconds_per_image": self.rate.model_seconds,
            "replica_seconds_per_image": self.rate.replica_seconds,
            "bounds_images_per_s": self.rate.bounds,
            "bound": self.rate.bound,
            "images_per_s_per_device": self.rate.per_device_images_per_s,
            "device_hours": self.device_hours,
            "devices_needed": self.devices_needed,
            "devices": self.devices,
            "nodes": self.nodes,
            "expected_seconds": self.seconds,
            "expected_images_per_s": self.images / self.seconds if self.seconds else None,
        }


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def devices_needed(images: int, device_seconds_per_image: float, window: float, fixed_seconds: float = 0.0) -> int:
    """ceil(images x seconds per image on one device / (window - fixed seconds)): the fewest devices
    that finish within `window`; a ValueError when the fixed seconds alone fill the window."""
    room = window - fixed_seconds
    if room <= 0:
        raise ValueError(
            f"the window {window:g} s leaves no time after the job's fixed {fixed_seconds:g} s of start-up and "
            "finish; give a longer window"
        )
    return max(1, math.ceil(images * device_seconds_per_image / room - 1e-9))


def job_seconds(images: int, rate: Rate, devices: int, fixed_seconds: float) -> float:
    """Expected wall clock of the job on `devices` devices."""
    return fixed_seconds + images / (rate.per_device_images_per_s * devices)


def plan_budget(
    *,
    images: int,
    budget: float,
    costs: Sequence[float],
    scores: Any,
    speed: Speed,
    node: Node,
    job: JobCosts,
    window: float | None = None,
    devices: int | None = None,
    predictions: Any = None,
    labels: Any = None,
    shadow_share: float = SHADOW_SHARE,
) -> Plan:
    """The forward plan: expected cost, exits, accuracy, rate, device-hours for `images` at `budget`,
    the devices needed within `window` (when given) and the wall clock on `devices` (when given)."""
    _check_images(images)
    exits = expected_exits(costs, scores, budget, predictions, labels, shadow_share)
    rate = steady_rate(exits, speed, node, job)
    per_image = 1.0 / rate.per_device_images_per_s
    needed = devices_needed(images, per_image, window, job.fixed_seconds) if window is not None else None
    on = devices or needed
    seconds = job_seconds(images, rate, on, job.fixed_seconds) if on else None
    return Plan(
        images=images,
        window=window,
        exits=exits,
        costs=tuple(float(c) for c in as_costs(costs)),
        speed=speed,
        node=node,
        job=job,
        rate=rate,
        device_hours=images * per_image / 3600.0,
        devices_needed=needed,
        devices=devices,
        seconds=seconds,
        mode="forward",
    )


def best_budget(
    *,
    images: int,
    devices: int,
    window: float,
    costs: Sequence[float],
    scores: Any,
    speed: Speed | Callable[[Exits], Speed],
    node: Node,
    job: JobCosts,
    predictions: Any = None,
    labels: Any = None,
    shadow_share: float = SHADOW_SHARE,
    rtol: float = 1e-4,
) -> Plan:
    """The inverse plan: the largest budget (mean MACs per image) with which `images` finish on
    `devices` devices within `window`, found by bisection on the forward plan (the expected seconds
    grow with the budget). `speed` may be a function of the exits (a probe of the engine at those
    exit shares): it is called at the middle of the cost range, and again at the answer, which is
    then searched once more. A ValueError when even the glance-only budget does not fit.
    """
    _check_images(images)
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    c = as_costs(costs)
    low, high = float(c[0]), float(c[-1])

    def at(budget: float, fast: Speed) -> Plan:
        p = plan_budget(
            images=images, budget=budget, costs=c, scores=scores, speed=fast, node=node, job=job,
            devices=devices, predictions=predictions, labels=labels, shadow_share=shadow_share,
        )  # fmt: skip
        return dataclasses.replace(p, window=window, mode="best budget")

    def search(fast: Speed) -> Plan:
        answer = at(low, fast)
        if answer.seconds > window:
            need = devices_needed(images, 1.0 / answer.rate.per_device_images_per_s, window, job.fixed_seconds)
            raise ValueError(
                f"{images:,} images do not finish within {format_duration(window)} on {devices} "
                f"{node.devices_word}(s) even at the glance-only budget {format_amount(low)} per image "
                f"(expected {format_duration(answer.seconds)}); that needs {need} {node.devices_word}(s), "
                "or a longer window"
            )
        top = at(high, fast)
        if top.seconds <= window:
            return top
        lo, hi = low, high
        while hi - lo > rtol * (high - low):
            mid = 0.5 * (lo + hi)
            p = at(mid, fast)
            if p.seconds <= window:
                lo, answer = mid, p
            else:
                hi = mid
        return answer

    if not callable(speed):
        return search(speed)
    answer = search(speed(expected_exits(c, scores, 0.5 * (low + high), shadow_share=shadow_share)))
    return search(speed(answer.exits))


def _check_images(images: int) -> None:
    if not (isinstance(images, (int, np.integer)) and images >= 1):
        raise ValueError(f"the number of images must be a whole number >= 1, got {images}")


# ----------------------------------------------------------------------------- measurements


def probe_engine(
    model: Any,
    shares: Sequence[float],
    step_seconds: Sequence[float],
    batch_size: int,
    batches_per_call: int,
    device: Any = "cpu",
    *,
    calls: int = 2,
    autocast_dtype: Any = None,
    channels_last: bool = False,
    seed: int = 0,
) -> tuple[float, dict[str, Any]]:
    """The share of the full-batch speed (`step_seconds`) that the real engine reaches in calls of
    `batches_per_call` batches at these exit `shares`: (efficiency, details).

    One batch of random images is scored (all T steps), thresholds are set so that the shares exit
    on it, and the engine then runs calls made of that batch repeated (one untimed call first), each
    a fresh engine flushed at its end as an actor call is, with uint8 images normalised per batch
    as the actor does. The efficiency compares the engine's time with the full-batch time of the
    exits it really made.
    """
    import torch

    from gfpipe.budget.scores import exit_scores
    from gfpipe.budget.solver import thresholds as cumulative_thresholds
    from gfpipe.engine import EarlyExitEngine

    device = torch.device(device)
    model = model.to(device).eval()
    cfg = model.config
    prep = model.card.preprocessing
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch_size, 3, cfg.input_size, cfg.input_size), generator=gen, dtype=torch.uint8)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model.anytime((pixels.to(device).float() - mean) / std)
    scores = exit_scores(logits.float()).T.cpu().numpy()  # (B, T)
    q = np.clip(np.asarray(shares, np.float64), 0.0, None)
    eta = cumulative_thresholds(scores, q / q.sum())
    per_call = batch_size * batches_per_call

    def one_call(engine: Any) -> None:
        def batches():
            for b in range(batches_per_call):
                keys = list(range(b * batch_size, (b + 1) * batch_size))
                yield keys, (pixels.to(device, non_blocking=True).float() - mean) / std

        for _ in engine.run(batches()):
            pass

    def new_engine() -> Any:
        return EarlyExitEngine(
            model, eta, batch_size, device, autocast_dtype=autocast_dtype, channels_last=channels_last
        )

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    one_call(new_engine())  # warm-up
    exits = np.zeros(cfg.T, np.int64)
    sync()
    started = time.perf_counter()
    for _ in range(calls):
        engine = new_engine()
        one_call(engine)
        exits += np.asarray(engine.stats.exits, np.int64)
    sync()
    seconds = time.perf_counter() - started
    full_batch = float(np.dot(exits, np.asarray(step_seconds, np.float64)))
    efficiency = full_batch / seconds
    details = {
        "images": int(calls * per_call),
        "seconds": seconds,
        "images_per_s": calls * per_call / seconds,
        "full_batch_seconds": full_batch,
        "exit_shares": (exits / exits.sum()).tolist(),
    }
    return efficiency, details


def measure_speed(
    model: Any,
    device: str,
    node: Node,
    *,
    exits: Exits | None = None,
    probe_calls: int = 2,
    repeats: int = 5,
) -> tuple[Speed, Callable[[Exits], Speed]]:
    """Per-step seconds measured now on `device` at the job's batch size with the replica's threads,
    and a function that probes the engine's efficiency at given exits (`probe_engine`).

    Returns (speed, probe): `speed` carries the efficiency probed at `exits` when given (else the
    default of `ENGINE_EFFICIENCY`), `probe(exits)` measures it again at other exits.
    """
    import torch

    from gfpipe.budget.costs import measure_step_seconds

    gpu = device == "cuda"
    dev = torch.device("cuda:0" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else None
    threads = torch.get_num_threads()
    if not gpu:
        torch.set_num_threads(node.threads)
    try:
        seconds = tuple(
            measure_step_seconds(model, node.batch_size, dev, autocast_dtype=dtype, warmup=1, repeats=repeats)
        )
    finally:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(dev) if gpu else f"cpu, {node.threads} thread(s)"
    base = Speed(
        device="cuda" if gpu else "cpu",
        step_seconds=seconds,
        engine_efficiency=ENGINE_EFFICIENCY["cuda" if gpu else "cpu"],
        threads=node.threads,
        source=f"measured now on {name} at batch {node.batch_size}",
        engine_source="default (not probed)",
    )

    def probe(at: Exits) -> Speed:
        old = torch.get_num_threads()
        if not gpu:
            torch.set_num_threads(node.threads)
        try:
            efficiency, details = probe_engine(
                model, at.shares, seconds, node.batch_size, node.batches_per_call, dev,
                calls=probe_calls, autocast_dtype=dtype, channels_last=gpu,
            )  # fmt: skip
        finally:
            torch.set_num_threads(old)
        log.debug("engine probe: %s", details)
        return dataclasses.replace(
            base,
            engine_efficiency=min(efficiency, 1.5),
            engine_source=(
                f"probed now: the engine on {details['images']} images in calls of "
                f"{node.batch_size} x {node.batches_per_call}"
            ),
        )

    return (probe(exits) if exits is not None else base), probe


def measure_decode(
    shards: Sequence[Any],
    preprocessing: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    read_options: Any = None,
    images: int = 512,
) -> tuple[float, int]:
    """Seconds a read task spends per image, measured in this process on up to `images` images of the
    first shards: reading, decoding and preprocessing to the model's uint8 input
    (`gfpipe.data.decode.decode_uint8`), stacked in blocks of 32 rows as the job's read tasks yield
    them. Returns (seconds per image, images timed)."""
    from gfpipe.data.decode import decode_uint8
    from gfpipe.data.shards import ReadOptions, iter_shard_records

    read_options = read_options or ReadOptions()
    crop = preprocessing.crop
    done = 0
    block: list[Any] = []
    started = time.perf_counter()
    for shard in shards:
        for record in iter_shard_records(shard, storage_options, read_options):
            image = None
            if record.error is None:
                image, _, _ = decode_uint8(record.data, preprocessing)
            block.append(image if image is not None else np.zeros((3, crop, crop), np.uint8))
            done += 1
            if len(block) == 32 or done >= images:
                np.stack(block)
                block = []
            if done >= images:
                break
        if done >= images:
            break
    if block:
        np.stack(block)
    seconds = time.perf_counter() - started
    if not done:
        raise ValueError("no image found to time decoding on")
    return seconds / done, done
