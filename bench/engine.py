"""Does real early exit pay off as the MACs say, and how much does the engine itself cost?

Same model, same images, one process. Every round times three things back to back, the order
alternating between rounds (baseline first in even rounds, engine first in odd ones, the
per-step timings always in between):
  baseline  all T steps on every image (`GFNet.anytime`, what the paper's code does);
  engine    `EarlyExitEngine` at the budget;
  steps     the glance and each focus step on full batches of the same images, timed one by one.
Each round gives its own ratios, and the figures are the median of the per-round ratios with
their min-max spread (never a ratio of separately taken medians: one loaded moment on one side
would move it):
  realized / theoretical    (baseline time / engine time) / (MACs of all steps / MACs spent by
                            the engine). Goal >= 0.9 at batch >= 16 on CPU.
  batch efficiency          engine time predicted from this round's full-batch step times and the
                            engine's exit histogram / measured engine time. Goal >= 0.95.
  overhead-free r/t         realized / theoretical of an engine with no overhead at all: the
                            baseline time / the predicted engine time, over the MACs ratio. The
                            measured r/t is this times the batch efficiency.
  prediction / baseline     baseline time predicted from the same step times / measured baseline
                            time: about 1, or the prediction flatters one side.

Weights are random (`common.randomize_weights`, spread so that confidences vary between images):
timing does not depend on them, and thresholds are solved on separate calibration images, so the
exit histogram follows the budget. Where random BN statistics make every image score the same
(EfficientNet), `--calibrate-bn` re-estimates them on calibration images
(`common.calibrate_batchnorm`); the script warns when a step's scores barely vary. Before
anything runs, glibc malloc is tuned in-process for both sides (`gfpipe.runtime.tune_allocator`);
`--no-tune-allocator` shows the difference.

    PYTHONPATH=. python bench/engine.py [--arch resnet50 --patch 96 --T 5 --batch 16 --images 256]
    PYTHONPATH=. python bench/engine.py --family densenet --images 256   (a family's variant; see --help)
    PYTHONPATH=. python bench/engine.py --device cuda --dtype bf16 --channels-last --batch 64
Writes bench/results/NAME.json (git ignores it; BENCHMARKS.md carries the recorded figures).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FAMILIES, Variant, calibrate_batchnorm, machine, randomize_weights, write_results  # noqa: E402

from gfpipe.budget.costs import step_costs  # noqa: E402
from gfpipe.budget.scores import exit_scores  # noqa: E402
from gfpipe.budget.solver import solve_thresholds  # noqa: E402
from gfpipe.engine import EarlyExitEngine, batched  # noqa: E402
from gfpipe.model import GFNet, GFNetConfig  # noqa: E402
from gfpipe.runtime import tune_allocator  # noqa: E402

try:
    import resource
except ImportError:  # not on Unix: no page-fault counts
    resource = None

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GOALS = {"realized_over_theoretical": ">= 0.9 (batch >= 16, CPU)", "batch_efficiency": ">= 0.95"}


class Setup:
    """Everything the three timed sides share: model, images, device, autocast."""

    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.autocast_dtype = DTYPES[args.dtype]
        if self.autocast_dtype is not None and self.device.type != "cuda":
            raise SystemExit(f"--dtype {args.dtype} is autocast on CUDA; on CPU use --dtype fp32")
        self.channels_last = args.channels_last
        self.batch = args.batch
        torch.manual_seed(0)
        cfg = GFNetConfig(
            backbone=args.arch, num_classes=1000, input_size=args.input_size, patch_size=args.patch, T=args.T
        )
        model = GFNet(cfg).eval()
        randomize_weights(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.T = self.model.config.T
        gen = torch.Generator().manual_seed(1)
        shape = (args.images, 3, cfg.input_size, cfg.input_size)
        # Images live where the model runs, so every side starts from the same place.
        self.calibration = self._place(torch.randn(shape, generator=gen))
        self.x = self._place(torch.randn(shape, generator=gen))
        self.keys = [str(i) for i in range(args.images)]
        if args.calibrate_bn:
            calibrate_batchnorm(self.model, lambda: self.model.anytime(self.calibration[:64]))

    def _place(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @torch.inference_mode()
    def scores(self, x: torch.Tensor) -> np.ndarray:
        """Exit scores (N, T) of every step for every image: the solver's calibration input."""
        with self.autocast():
            out = [exit_scores(self.model.anytime(x[i : i + self.batch])).T for i in range(0, len(x), self.batch)]
        return torch.cat(out).cpu().numpy()

    @torch.inference_mode()
    def baseline(self, x: torch.Tensor) -> float:
        """Seconds for all T steps on every image."""
        start = self.now()
        with self.autocast():
            for i in range(0, len(x), self.batch):
                self.model.anytime(x[i : i + self.batch])
        return self.now() - start

    def engine(self, x: torch.Tensor, eta: np.ndarray) -> tuple[float, EarlyExitEngine]:
        """Seconds for the engine over every image, and the engine (its stats)."""
        engine = EarlyExitEngine(
            self.model,
            eta,
            batch_size=self.batch,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
        )
        start = self.now()
        rows = sum(1 for _ in engine.run(batched(self.keys[: len(x)], x, self.batch)))
        elapsed = self.now() - start
        if rows != len(x):
            raise RuntimeError(f"the engine gave {rows} rows for {len(x)} images")
        return elapsed, engine

    @torch.inference_mode()
    def steps(self, x: torch.Tensor) -> list[float]:
        """Mean seconds of each step (glance, focus 2..T) per call on full batches of x.

        On CUDA, events between the steps time the GPU's timeline without a synchronisation per
        step (one would stall the launch queue that the baseline keeps full).
        """
        cuda = self.device.type == "cuda"
        marks: list[list] = []
        with self.autocast():
            self.sync()
            for i in range(0, len(x) - self.batch + 1, self.batch):
                xb = x[i : i + self.batch]
                mark = self._marker(cuda)
                points = [mark()]
                _, state = self.model.glance(xb)
                points.append(mark())
                for _ in range(1, self.T):
                    _, state = self.model.focus(xb, state)
                    points.append(mark())
                marks.append(points)
            self.sync()
        if not marks:
            raise SystemExit(f"--images must be at least --batch ({self.batch}) to time full batches")
        if cuda:
            gaps = [[a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(p)] for p in marks]
        else:
            gaps = [[b - a for a, b in itertools.pairwise(p)] for p in marks]
        return [sum(g[t] for g in gaps) / len(gaps) for t in range(self.T)]

    @staticmethod
    def _marker(cuda: bool) -> Callable[[], object]:
        if not cuda:
            return time.perf_counter

        def mark():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        return mark


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def timed_faults(fn: Callable[[], object]) -> tuple[object, int]:
    before = minor_faults()
    out = fn()
    return out, minor_faults() - before


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict, digits: int = 3, dash: str = "-") -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}{dash}{s['max']:.{digits}f}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        help="take --arch, --patch, --T and --input-size (unless given) from one variant of the family: "
        + "; ".join(f"{name}: {variant}" for name, variant in FAMILIES.items())
        + "; results in engine_FAMILY_bBATCH unless --name",
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--T", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument(
        "--budget-share", type=float, default=0.35, help="target mean cost as a share of the way from C_1 to C_T"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds (baseline, steps, engine in each)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="bf16/fp16: autocast on CUDA (the engine's autocast_dtype) for every side",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and images, every side")
    parser.add_argument(
        "--no-tune-allocator",
        dest="tune_allocator",
        action="store_false",
        help="leave glibc malloc's defaults (to measure what tune_allocator changes)",
    )
    parser.add_argument(
        "--calibrate-bn",
        action="store_true",
        help="after randomizing the weights, re-estimate BatchNorm statistics on 64 calibration images "
        "(for backbones whose random weights give every image nearly the same scores: EfficientNet, MobileNet-V3)",
    )
    parser.add_argument("--name", default="engine", help="results file bench/results/NAME.json")
    known, _ = parser.parse_known_args(argv)
    if known.family:
        v = FAMILIES[known.family]
        name = f"engine_{known.family}_b{known.batch}"
        parser.set_defaults(arch=v.arch, patch=v.patch, T=v.T, input_size=v.input_size, name=name)
    return parser.parse_args(argv)


FLAT_SCORES = 1e-4  # a score moves by about 1e-5 with batch composition and float rounding


def flat_steps(scores: np.ndarray) -> list[int]:
    """Steps (1..T) at which the calibration images' exit scores differ by less than FLAT_SCORES:
    there rounding, not the image, decides which images exit (when all are equal, all exit or
    none), and the exit histogram says little about the engine."""
    return [t + 1 for t in range(scores.shape[1]) if np.ptp(scores[:, t]) < FLAT_SCORES]


def one_round(s: Setup, eta: np.ndarray, costs: np.ndarray, r: int) -> dict:
    """Round r: the three sides back to back (baseline first in even rounds), and its ratios."""
    sides = ["baseline", "steps", "engine"] if r % 2 == 0 else ["engine", "steps", "baseline"]
    run = {
        "baseline": lambda: s.baseline(s.x),
        "steps": lambda: s.steps(s.x),
        "engine": lambda: s.engine(s.x, eta),
    }
    got, faults = {}, {}
    for side in sides:
        got[side], faults[side] = timed_faults(run[side])
    n = len(s.x)
    t_base, step_seconds = got["baseline"], got["steps"]
    t_engine, engine = got["engine"]
    exits = np.array(engine.stats.exits)
    reaching = exits[::-1].cumsum()[::-1]  # images that run step t
    predicted_engine = float(reaching @ np.array(step_seconds)) / s.batch
    predicted_base = n * sum(step_seconds) / s.batch
    theoretical = costs[-1] * n / float(exits @ costs)
    return {
        "order": sides,
        "seconds_all_steps": t_base,
        "seconds_engine": t_engine,
        "seconds_engine_predicted": predicted_engine,
        "seconds_all_steps_predicted": predicted_base,
        "full_batch_step_seconds": step_seconds,
        "theoretical_speedup": theoretical,
        "realized_speedup": t_base / t_engine,
        "realized_over_theoretical": t_base / t_engine / theoretical,
        "batch_efficiency": predicted_engine / t_engine,
        "overhead_free_realized_over_theoretical": t_base / predicted_engine / theoretical,
        "prediction_over_baseline": predicted_base / t_base,
        "minor_faults": faults,
        "exits": exits.tolist(),
        "calls": len(engine.stats.calls),
        "partial_calls": sum(1 for _, size in engine.stats.calls if size != s.batch),
    }


def summarize(rounds: list[dict]) -> dict:
    """median [min-max] over rounds of every per-round figure."""
    return {
        key: spread([r[key] for r in rounds])
        for key in (
            "realized_over_theoretical",
            "batch_efficiency",
            "overhead_free_realized_over_theoretical",
            "prediction_over_baseline",
            "realized_speedup",
            "theoretical_speedup",
            "seconds_all_steps",
            "seconds_engine",
            "seconds_engine_predicted",
        )
    }


def label(args: argparse.Namespace) -> str:
    """The model as BENCHMARKS.md's engine table names it, e.g. "DenseNet-121 p96 T5"."""
    name = next((v.label for v in FAMILIES.values() if v.arch == args.arch), args.arch)
    return str(Variant(name, args.arch, args.patch, args.T, args.input_size))


def table_row(args: argparse.Namespace, per_round: dict, exits: list[int]) -> str:
    """One row of BENCHMARKS.md's engine table; goals met in bold."""

    def goal(key: str, floor: float) -> str:
        text = fmt(per_round[key], dash="–")
        return f"**{text}**" if per_round[key]["median"] >= floor else f"{text} (misses {floor})"

    cells = [
        label(args),
        str(args.batch),
        str(args.images),
        "/".join(str(e) for e in exits),
        f"{per_round['seconds_all_steps']['median']:.2f} s",
        f"{per_round['seconds_engine']['median']:.2f} s",
        f"{per_round['theoretical_speedup']['median']:.3f}",
        goal("realized_over_theoretical", 0.9),
        fmt(per_round["overhead_free_realized_over_theoretical"], dash="–"),
        goal("batch_efficiency", 0.95),
        fmt(per_round["prediction_over_baseline"], dash="–"),
    ]
    return "| " + " | ".join(cells) + " |"


def results(
    args: argparse.Namespace, rounds: list[dict], per_round: dict, costs: np.ndarray, target: float, allocator: str
) -> dict:
    """The figures written to bench/results/NAME.json."""
    n = args.images
    exits = rounds[-1]["exits"]
    macs_engine = float(np.array(exits) @ costs)
    return {
        **{key: value["median"] for key, value in per_round.items()},
        "spread": {key: [value["min"], value["max"]] for key, value in per_round.items()},
        "method": "median of per-round ratios over interleaved rounds (baseline, steps, engine; order "
        "alternating), spread = min-max over rounds",
        "full_batch_step_seconds": [
            statistics.median(r["full_batch_step_seconds"][t] for r in rounds) for t in range(len(costs))
        ],
        "macs_all_steps": float(costs[-1] * n),
        "macs_engine": macs_engine,
        "mean_macs_target": float(target),
        "mean_macs_engine": macs_engine / n,
        "exits": exits,
        "calls": rounds[-1]["calls"],
        "partial_calls": rounds[-1]["partial_calls"],
        "minor_faults_per_run": {
            side: statistics.median(r["minor_faults"][side] for r in rounds) for side in ("baseline", "steps", "engine")
        },
        "allocator": allocator,
        "rounds": rounds,
        "config": {
            "family": args.family,
            "arch": args.arch,
            "patch": args.patch,
            "T": args.T,
            "input_size": args.input_size,
            "batch": args.batch,
            "images": args.images,
            "budget_share": args.budget_share,
            "repeats": args.repeats,
            "device": str(torch.device(args.device)),
            "dtype": args.dtype,
            "channels_last": args.channels_last,
            "calibrate_bn": args.calibrate_bn,
        },
    }


def main() -> None:
    args = parse_args()
    if args.tune_allocator:
        allocator = tune_allocator() or "defaults (not glibc: nothing to tune)"
    else:
        allocator = "glibc defaults (--no-tune-allocator)"

    s = Setup(args)
    costs = np.array(step_costs(s.model))
    target = costs[0] + args.budget_share * (costs[-1] - costs[0])
    calibration_scores = s.scores(s.calibration)
    flat = flat_steps(calibration_scores)
    if flat:
        print(
            f"WARNING: at step(s) {flat} the calibration scores differ by less than {FLAT_SCORES} between images, "
            "so rounding decides the exits; --calibrate-bn spreads them",
            flush=True,
        )
    eta = solve_thresholds(costs, calibration_scores, target).thresholds

    # Warm-up: every side once (the engine over all images, so its partial-batch shapes are seen).
    s.baseline(s.x[: 2 * args.batch])
    s.steps(s.x[: 2 * args.batch])
    s.engine(s.x, eta)

    rounds = []
    for r in range(args.repeats):
        rounds.append(one_round(s, eta, costs, r))
        last = rounds[-1]
        print(
            f"round {r + 1}/{args.repeats} ({', '.join(last['order'])}): all steps {last['seconds_all_steps']:.3f} s, "
            f"engine {last['seconds_engine']:.3f} s (predicted {last['seconds_engine_predicted']:.3f} s), "
            f"r/t {last['realized_over_theoretical']:.3f}, batch eff {last['batch_efficiency']:.3f}, "
            f"pred/base {last['prediction_over_baseline']:.3f}, minor faults {last['minor_faults']}",
            flush=True,
        )

    per_round = summarize(rounds)
    figures = results(args, rounds, per_round, costs, target, allocator)
    figures["flat_score_steps"] = flat
    print(f"machine: {machine()}")
    layout = ", channels_last" if args.channels_last else ""
    print(
        f"{label(args)}, batch {args.batch}, {args.images} images on {s.device} ({args.dtype}{layout}), "
        f"exits per step {figures['exits']}, allocator {figures['allocator']}"
    )
    print(f"median [min-max] over {args.repeats} rounds:")
    print(
        f"  all T steps {fmt(per_round['seconds_all_steps'], 2)} s   engine {fmt(per_round['seconds_engine'], 2)} s"
        f"   predicted engine {fmt(per_round['seconds_engine_predicted'], 2)} s"
    )
    print(
        f"  MACs ratio (theoretical speedup) {fmt(per_round['theoretical_speedup'])}   "
        f"realized speedup {fmt(per_round['realized_speedup'])}"
    )
    print(f"  realized / theoretical        {fmt(per_round['realized_over_theoretical'])} (goal >= 0.9)")
    print(f"  overhead-free r/t             {fmt(per_round['overhead_free_realized_over_theoretical'])}")
    print(f"  batch efficiency              {fmt(per_round['batch_efficiency'])} (goal >= 0.95)")
    print(f"  prediction / baseline         {fmt(per_round['prediction_over_baseline'])} (about 1)")
    print(f"  minor page faults per run     {figures['minor_faults_per_run']}")
    print(f"BENCHMARKS.md row:\n{table_row(args, per_round, figures['exits'])}")
    print(f"wrote {write_results(args.name, figures, GOALS)}")


if __name__ == "__main__":
    main()
