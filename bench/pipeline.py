"""The classify job's throughput, side by side with its parts and with the paper's way, in one run.

On one archive (the demo model's glyphs, `--images` images in shards of 500), each round runs, in
alternating order:
  engine     the early-exit engine alone on pre-decoded images (uint8 in memory, normalised per
             batch), with the budget controller, in calls of `--batches-per-call` model batches
             like an actor; torch threads = what one model actor gets in the job;
  decode     reading + decoding alone (`gfpipe.classify.reading.read_shards`, one process: what
             one read task does);
  job        the Ray Data job (`gfpipe.pipeline.classify`, Ray already up, --overwrite), wall time;
  all_steps  the paper's way on the same infrastructure: the same job at a budget of the
             all-steps cost, so every image runs all T steps (exits are then simulated from the
             scores, which costs nothing); its images/s;
  engine_all_steps  the engine alone at the all-steps budget: with `engine`, the speed-up the
             model and engine allow before any pipeline cost (the job cannot beat it).
Figures (median over rounds of per-round ratios, with the spread):
  job / min(engine, decode)           goal >= 0.85
  (job / all_steps) / (C_T / realized mean cost)   goal >= 0.9 (speed-up vs the MACs ratio)
  (engine / engine_all_steps) / (C_T / the engine's mean cost)   the same, engine alone
With `--model resnet50` the same runs use a ResNet-50 GFNet (random, spread weights, p = 96, T = 5,
calibrated on its own scores; `heavy_checkpoint`) on 224-pixel glyphs at a budget 35% of the way
from its glance-only to its all-steps cost: a model whose images cost ~55x the demo model's,
so the pipeline's own per-image and start-up work weighs as little as with a deployed model.
Then, once per setting, batch fullness inside the actors for 2, 4, 8 and 16 model batches per call:
the share of image-steps that ran in full model batches, partial calls, the model stage's
images/s (images / seconds in the engine), the job's images/s and its cost vs budget.

With `--device cuda` (no Ray there): only the engine part, in bf16 autocast + channels_last, for
the demo model and a ResNet-50 GFNet (random weights, p = 96, T = 5), with images/s and the GPU's
busy share (NVML utilisation sampled every 50 ms, when nvidia-ml-py is installed).

    PYTHONPATH=. .venv/bin/python bench/pipeline.py [--images 16000 --rounds 3 --batches-per-call 4 --no-sweep]
    PYTHONPATH=. .venv/bin/python bench/pipeline.py --model resnet50 --images 1000 --no-sweep
    PYTHONPATH=. python bench/pipeline.py --device cuda          # on a GPU machine
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from gfpipe.budget.control import BudgetController  # noqa: E402
from gfpipe.budget.costs import step_costs  # noqa: E402
from gfpipe.checkpoint import load_checkpoint  # noqa: E402
from gfpipe.data import discover_shards  # noqa: E402
from gfpipe.data.shards import ReadOptions  # noqa: E402
from gfpipe.engine import EarlyExitEngine  # noqa: E402
from gfpipe.evaluate import calibration_scores  # noqa: E402
from gfpipe.runtime import tune_allocator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 9e6  # MACs per image for the demo model (glance 3.69M, all steps 15.42M)
HEAVY_SIZE = 224  # the --model resnet50 archive's image size (its model's input)


def archive(images: int, size: int = 128) -> str:
    """bench/data/pipeline-N/test: the demo geometry, seed 1 (not the demo model's training seed);
    at another `size`, bench/data/pipeline-N-SIZE/test, in shards of 250."""
    from gfpipe.data.synthetic import SynthConfig, write_dataset

    name, shard_size = (f"pipeline-{images}", 500) if size == 128 else (f"pipeline-{images}-{size}", 250)
    root = ROOT / "bench" / "data" / name
    if not (root / "test" / "_manifest.json").exists():
        config = SynthConfig(image_size=size, small_font=(0.11, 0.14), seed=1)
        write_dataset(str(root), "test", images, config, shard_size=shard_size)
    return str(root / "test")


def heavy_checkpoint(data: str) -> str:
    """A ResNet-50 GFNet (p 96, T 5) with random, spread weights (bench/common.py), calibrated on
    its own exit scores for the first 256 images of `data` (the same images at every --images:
    the synthetic archive is made image by image from one seed), saved once under bench/data: a
    model whose time per image is far above the pipeline's own per-image work, as a deployed
    model's is."""
    from common import randomize_weights

    from gfpipe.checkpoint import save_checkpoint
    from gfpipe.classify.calibrate import archive_scores
    from gfpipe.config import Preprocessing
    from gfpipe.model import GFNet, GFNetConfig

    path = ROOT / "bench" / "data" / "pipeline-resnet50.pt"
    if path.exists():
        return str(path)
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone="resnet50", num_classes=1000, input_size=HEAVY_SIZE, patch_size=96, T=5))
    randomize_weights(model)
    model.card.preprocessing = Preprocessing(resize=HEAVY_SIZE, crop=HEAVY_SIZE)
    _, images, _ = decoded(data, model.card.preprocessing)
    scores = archive_scores(model, images[:256], 64, "cpu")  # (256, T), as --calibrate scores an archive
    model.card.calibration = {"scores": torch.from_numpy(scores), "source": f"{data} (its own scores, label-free)"}
    save_checkpoint(model, str(path), provenance={"made_by": "bench/pipeline.py --model resnet50"})
    return str(path)


def decoded(data: str, prep) -> tuple[list[str], np.ndarray, float]:
    """(keys, uint8 images (N, 3, S, S), images/s) of reading + decoding in this one process."""
    from gfpipe.classify.reading import read_shards

    started = time.perf_counter()
    keys, blocks = [], []
    for shard in discover_shards(data):
        batch = {
            "uri": np.array([shard.uri]),
            "format": np.array([shard.format]),
            "sid": np.array(["bench"]),
            "piece": np.array([0]),
            "pieces": np.array([1]),
        }
        for block in read_shards(
            batch, output=str(ROOT / "bench" / "data" / "scratch"), storage_options=None,
            read_options=ReadOptions(), preprocessing=prep,
        ):  # fmt: skip
            keys.extend(block["key"].tolist())
            blocks.append(block["image"])
    seconds = time.perf_counter() - started
    return keys, np.concatenate(blocks), len(keys) / seconds


def engine_rate(model, keys, images, batch, per_call, device, controller=None, thresholds=None, **engine_kw):
    """images/s of the engine over pre-decoded uint8 images, in calls of `per_call` images.

    Each call builds an engine, as an actor call does, with the step costs counted once (as the
    job's driver counts them for its actors; counting them in every call was 6% of this side)."""
    engine_kw.setdefault("step_macs", step_costs(model))
    prep = model.card.preprocessing
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    tensor = torch.from_numpy(images)
    rows = 0
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for start in range(0, len(keys), per_call):
        engine = EarlyExitEngine(model, thresholds, batch, device, controller=controller, **engine_kw)

        def batches(start=start):
            for s in range(start, min(start + per_call, len(keys)), batch):
                x = tensor[s : s + batch].to(device, non_blocking=True).float()
                yield keys[s : s + batch], x.sub_(mean).div_(std)  # as the actor normalises

        rows += sum(1 for _ in engine.run(batches()))
    sync()
    return rows / (time.perf_counter() - started)


def job(data: str, out: str, budget: str, batches_per_call: int, checkpoint: str = "demo") -> tuple[float, dict]:
    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.pipeline import classify

    config = ClassifyConfig(
        input=data,
        output=out,
        checkpoint=checkpoint,
        budget=parse_budget(budget),
        overwrite=True,
        batches_per_call=batches_per_call,
        progress_seconds=3600,
        report_samples=0,
    )
    started = time.perf_counter()
    summary = classify(config)
    return summary["images"] / (time.perf_counter() - started), summary


def cpu_bench(args) -> None:
    import ray

    tune_allocator()  # as every model actor does (gfpipe.runtime)
    torch.set_num_threads(1)  # what one model actor gets on this machine (gfpipe.pipeline.pool_shape)
    logging.basicConfig(level=logging.WARNING)
    if args.model == "demo":
        data, checkpoint, name = archive(args.images), "demo", f"pipeline-{args.images}"
    else:
        data = archive(args.images, HEAVY_SIZE)
        checkpoint, name = heavy_checkpoint(data), f"pipeline-resnet50-{args.images}"
    model = load_checkpoint(checkpoint)
    costs = np.asarray(step_costs(model))
    # The demo model's budget is the job's usual 9 MMACs; the heavy one's is 35% of the way from
    # its glance-only cost to its all-steps cost (as bench/engine.py sets its budgets).
    budget = BUDGET if args.model == "demo" else costs[0] + 0.35 * (costs[-1] - costs[0])
    calibration = calibration_scores(model)
    keys, images, _ = decoded(data, model.card.preprocessing)
    ray.init(address="local", num_cpus=os.cpu_count(), logging_level=logging.WARNING)
    out = str(ROOT / "bench" / "data" / "pipeline-out")
    sides = ["engine", "decode", "job", "all_steps", "engine_all_steps"]
    runs: dict[str, list[float]] = {s: [] for s in sides}
    realized: list[float] = []
    engine_realized: list[float] = []
    # One job first, not counted: the first job in a process also pays for importing Ray Data and
    # starting worker processes, which a cluster that runs jobs nightly has done long before.
    job(data, out, f"{budget:.0f}", args.batches_per_call, checkpoint)
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            if side in ("engine", "engine_all_steps"):
                target = budget if side == "engine" else costs[-1]
                controller = BudgetController(costs, target, calibration, total_images=len(keys))
                rate = engine_rate(model, keys, images, 64, 64 * args.batches_per_call, "cpu", controller=controller)
                if side == "engine":
                    engine_realized.append(controller.mean_cost)
            elif side == "decode":
                rate = decoded(data, model.card.preprocessing)[2]
            elif side == "job":
                rate, summary = job(data, out, f"{budget:.0f}", args.batches_per_call, checkpoint)
                realized.append(summary["budget"]["realized_macs_per_image"])
            else:
                rate, _ = job(data, out, f"{costs[-1]:.0f}", args.batches_per_call, checkpoint)
            runs[side].append(rate)
            print(f"round {r + 1} {side}: {rate:.0f} images/s", flush=True)
    e2e = [j / min(e, d) for j, e, d in zip(runs["job"], runs["engine"], runs["decode"], strict=True)]
    speed = [(j / a) / (costs[-1] / m) for j, a, m in zip(runs["job"], runs["all_steps"], realized, strict=True)]
    engine_speed = [
        (e / a) / (costs[-1] / m)
        for e, a, m in zip(runs["engine"], runs["engine_all_steps"], engine_realized, strict=True)
    ]
    sweep = []
    for per_call in () if args.no_sweep else (2, 4, 8, 16):
        rate, summary = job(data, out, f"{budget:.0f}", per_call, checkpoint)
        eng = summary["engine"]
        sweep.append(
            {
                "batches_per_call": per_call,
                "full_batch_share": eng["full_batch_share"],
                "partial_calls": eng["partial_calls"],
                "model_calls": eng["model_calls"],
                "model_images_per_s": summary["images"] / eng["model_seconds"],
                "job_images_per_s": rate,
                "budget_ratio": summary["budget"]["ratio"],
            }
        )
        print(sweep[-1], flush=True)
    ray.shutdown()
    figures = {
        "job_over_slower_part": statistics.median(e2e),
        "job_over_slower_part_spread": [min(e2e), max(e2e)],
        "speedup_over_macs_ratio": statistics.median(speed),
        "speedup_over_macs_ratio_spread": [min(speed), max(speed)],
        "engine_speedup_over_macs_ratio": statistics.median(engine_speed),
        "engine_speedup_over_macs_ratio_spread": [min(engine_speed), max(engine_speed)],
        "images_per_s": {k: v for k, v in runs.items()},
        "realized_macs_per_image": realized,
        "all_steps_macs": float(costs[-1]),
        "batches_per_call_sweep": sweep,
        "budget_macs": float(budget),
        "config": {
            "model": args.model,
            "images": args.images,
            "rounds": args.rounds,
            "batches_per_call": args.batches_per_call,
        },
    }
    print(f"machine: {machine()}")
    print(f"job / slower of engine and decode: {figures['job_over_slower_part']:.3f} {[round(x, 3) for x in e2e]}")
    print(f"speed-up / MACs ratio: {figures['speedup_over_macs_ratio']:.3f} {[round(x, 3) for x in speed]}")
    print(f"engine alone, speed-up / MACs ratio: {figures['engine_speedup_over_macs_ratio']:.3f}")
    goals = {"job_over_slower_part": ">= 0.85", "speedup_over_macs_ratio": ">= 0.9"}
    print(f"wrote {write_results(name, figures, goals)}")


class BusySampler:
    """The GPU's utilisation (share of time a kernel ran), sampled by NVML every 50 ms."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML: no busy share
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __enter__(self) -> BusySampler:
        if self._nvml:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._nvml:
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


def gpu_bench(args) -> None:
    from common import randomize_weights

    from gfpipe.budget.scores import exit_scores
    from gfpipe.budget.solver import solve_thresholds
    from gfpipe.model import GFNet, GFNetConfig

    tune_allocator()
    device = torch.device("cuda")
    # cudnn.benchmark stays off: the engine's flush calls come in many batch sizes, and autotuning
    # each new size cost more than the model (a first run here had the GPU busy 2-10% of the time).
    torch.backends.cudnn.benchmark = False
    results = []
    demo = load_checkpoint("demo")
    data = archive(args.images)
    keys, images, _ = decoded(data, demo.card.preprocessing)
    torch.manual_seed(0)
    resnet = GFNet(GFNetConfig(backbone="resnet50", num_classes=1000, patch_size=96, T=5)).eval()
    randomize_weights(resnet)
    big = np.random.default_rng(0).integers(0, 256, (args.images, 3, 224, 224), dtype=np.uint8)
    models = (("demo", demo, images, (256, 1024)), ("resnet50", resnet, big, (128, 256)))
    for name, model, pics, batches in (m for m in models if m[0] in args.models.split(",")):
        model = model.to(device)
        costs = np.asarray(step_costs(model))
        with torch.inference_mode():
            sample = torch.from_numpy(pics[:512]).to(device).float()
            prep = model.card.preprocessing
            mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
            scores = exit_scores(model.anytime((sample - mean) / std).float()).T.cpu().numpy()
        target = costs[0] + 0.4 * (costs[-1] - costs[0])
        eta = solve_thresholds(costs, scores, target).thresholds
        pic_keys = [str(i) for i in range(len(pics))]
        for batch in batches:
            for per_call in (int(c) for c in args.calls.split(",")):
                engine_rate(model, pic_keys[: batch * 2], pics[: batch * 2], batch, batch * 2, device, thresholds=eta,
                            autocast_dtype=torch.bfloat16, channels_last=True)  # fmt: skip
                with BusySampler() as sampler:
                    rate = engine_rate(model, pic_keys, pics, batch, batch * per_call, device, thresholds=eta,
                                       autocast_dtype=torch.bfloat16, channels_last=True)  # fmt: skip
                entry = {"model": name, "batch": batch, "batches_per_call": per_call, "images_per_s": rate,
                         "gpu_busy_share": sampler.busy, "images": len(pics)}  # fmt: skip
                results.append(entry)
                print(entry, flush=True)
    figures = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": results}
    path = write_results("pipeline_gpu", figures)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "pipeline_gpu.json").write_text(path.read_text())
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches-per-call", type=int, default=4, help="for the rounds (the job's CPU default: 4)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the batches-per-call sweep")
    parser.add_argument(
        "--model",
        default="demo",
        choices=["demo", "resnet50"],
        help="CPU: the demo model, or a ResNet-50 GFNet (random weights, 224 px glyphs) whose images cost far more",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--calls", default="2,8,32", help="GPU: model batches per call to measure")
    parser.add_argument("--models", default="demo,resnet50", help="GPU: which models")
    args = parser.parse_args()
    if args.device == "cuda":
        gpu_bench(args)
    else:
        cpu_bench(args)


if __name__ == "__main__":
    main()
