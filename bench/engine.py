"""Does real early exit pay off as the MACs say, and are the engine's batches full?

Same model, same images, one run:
(a) realized speedup over theoretical = (time of all T steps on every image, what the paper's
    code does) / (time of the engine at a budget), divided by the MACs ratio of the two.
    Goal >= 0.9 at batch >= 16 on CPU.
(b) batch efficiency = engine throughput / throughput predicted from full-batch per-step timings
    and the engine's own exit histogram. Goal >= 0.95.

Timings alternate baseline and engine runs and keep each one's median, since the machine is
noisy. Weights are random (spread so that confidences vary between images): timing does not
depend on them, and the thresholds are solved on calibration images so the exit histogram
follows the budget.

    PYTHONPATH=. python bench/engine.py [--arch resnet50 --patch 96 --T 5 --batch 16 --images 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, randomize_weights, write_results  # noqa: E402

from gfpipe.budget.costs import step_costs  # noqa: E402
from gfpipe.budget.solver import exit_fractions, thresholds  # noqa: E402
from gfpipe.engine import EarlyExitEngine, batched  # noqa: E402
from gfpipe.model import GFNet, GFNetConfig  # noqa: E402


@torch.inference_mode()
def confidences(model: GFNet, x: torch.Tensor, batch: int) -> np.ndarray:
    out = [model.anytime(x[i:i + batch]).softmax(-1).amax(-1).T for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()  # (N, T)


@torch.inference_mode()
def time_all_steps(model: GFNet, x: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        model.anytime(x[i:i + batch])
    return time.perf_counter() - start


def time_engine(model: GFNet, eta: np.ndarray, x: torch.Tensor, batch: int) -> tuple[float, EarlyExitEngine]:
    engine = EarlyExitEngine(model, eta, batch_size=batch)
    keys = [str(i) for i in range(len(x))]
    start = time.perf_counter()
    n = sum(1 for _ in engine.run(batched(keys, x, batch)))
    elapsed = time.perf_counter() - start
    assert n == len(x)
    return elapsed, engine


@torch.inference_mode()
def full_batch_step_seconds(model: GFNet, x: torch.Tensor, batch: int, repeats: int) -> list[float]:
    """Median seconds of each step (glance, focus 2..T) on one full batch."""
    xb = x[:batch]
    per_step: list[list[float]] = [[] for _ in range(model.config.T)]
    for _ in range(repeats):
        start = time.perf_counter()
        _, state = model.glance(xb)
        per_step[0].append(time.perf_counter() - start)
        for t in range(1, model.config.T):
            start = time.perf_counter()
            _, state = model.focus(xb, state)
            per_step[t].append(time.perf_counter() - start)
    return [statistics.median(s) for s in per_step]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--T", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--budget-share", type=float, default=0.35,
                        help="target mean cost as a share of the way from C_1 to C_T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="engine", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone=args.arch, num_classes=1000, patch_size=args.patch, T=args.T)).eval()
    randomize_weights(model)
    gen = torch.Generator().manual_seed(1)
    calibration = torch.randn(args.images, 3, 224, 224, generator=gen)
    x = torch.randn(args.images, 3, 224, 224, generator=gen)
    costs = np.array(step_costs(model))
    target = costs[0] + args.budget_share * (costs[-1] - costs[0])
    eta = thresholds(confidences(model, calibration, args.batch), exit_fractions(costs, target))

    time_engine(model, eta, x[: 2 * args.batch], args.batch)  # warm-up
    baseline, engine_times = [], []
    engine = None
    for _ in range(args.repeats):
        baseline.append(time_all_steps(model, x, args.batch))
        seconds, engine = time_engine(model, eta, x, args.batch)
        engine_times.append(seconds)
    t_all, t_engine = statistics.median(baseline), statistics.median(engine_times)
    exits = np.array(engine.stats.exits)
    macs_all = costs[-1] * args.images
    macs_engine = float(exits @ costs)
    realized_speedup = t_all / t_engine
    theoretical_speedup = macs_all / macs_engine

    step_seconds = full_batch_step_seconds(model, x, args.batch, args.repeats)
    reaching = exits[::-1].cumsum()[::-1]  # images that run step t
    predicted = float(sum(r / args.batch * s for r, s in zip(reaching, step_seconds)))
    batch_efficiency = predicted / t_engine

    figures = {
        "realized_over_theoretical": realized_speedup / theoretical_speedup,
        "batch_efficiency": batch_efficiency,
        "realized_speedup": realized_speedup,
        "theoretical_speedup": theoretical_speedup,
        "seconds_all_steps": t_all,
        "seconds_engine": t_engine,
        "seconds_engine_predicted": predicted,
        "full_batch_step_seconds": step_seconds,
        "macs_all_steps": macs_all,
        "macs_engine": macs_engine,
        "mean_macs_target": float(target),
        "mean_macs_engine": macs_engine / args.images,
        "exits": exits.tolist(),
        "calls": len(engine.stats.calls),
        "partial_calls": sum(1 for _, n in engine.stats.calls if n != args.batch),
        "config": {"arch": args.arch, "patch": args.patch, "T": args.T, "batch": args.batch, "images": args.images},
    }
    goals = {"realized_over_theoretical": ">= 0.9", "batch_efficiency": ">= 0.95"}
    print(f"machine: {machine()}")
    print(f"{args.arch} p={args.patch} T={args.T} batch {args.batch}, {args.images} images, exits per step {exits.tolist()}")
    print(f"all T steps: {t_all:.2f} s   engine: {t_engine:.2f} s   predicted from full batches: {predicted:.2f} s")
    print(f"MACs ratio (theoretical speedup): {theoretical_speedup:.3f}   realized speedup: {realized_speedup:.3f}")
    print(f"realized / theoretical: {figures['realized_over_theoretical']:.3f} (goal >= 0.9)")
    print(f"batch efficiency:       {batch_efficiency:.3f} (goal >= 0.95)")
    print(f"wrote {write_results(args.name, figures, goals)}")


if __name__ == "__main__":
    main()
