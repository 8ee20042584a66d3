"""Training throughput: Ray Train (2 workers, DDP, Ray Data input) vs a plain single-process loop.

Same data (cluttered glyphs at the demo's geometry), same model and stage-I recipe (the demo's),
one machine. Each round runs both sides back to back, in alternating order:
  plain  one process, `gfpipe.train.loops.Trainer` on batches decoded in the same process
         (`gfpipe.train.data.iter_batches`), torch threads = the cores given;
  ray    `gfpipe.train.run.train` with 2 workers on a local Ray of the same cores (Ray Data
         decodes on its own CPU; the workers share the rest).
Both report training images per second of each stage-I epoch after the first (the first warms
up); a round's figure is ray / plain, per core used (both use every core here). The figure is
the median over rounds with its spread. Goal: >= 0.9.

    PYTHONPATH=. .venv/bin/python bench/train.py [--images 4000 --epochs 3 --rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from gfpipe.checkpoint import load_checkpoint  # noqa: E402
from gfpipe.data import discover_shards, iter_shard_records  # noqa: E402
from gfpipe.data.labels import LabelMap  # noqa: E402
from gfpipe.data.synthetic import SynthConfig, write_dataset  # noqa: E402
from gfpipe.model import GFNet  # noqa: E402
from gfpipe.runtime import tune_allocator  # noqa: E402
from gfpipe.train.config import load_config  # noqa: E402
from gfpipe.train.data import iter_batches  # noqa: E402
from gfpipe.train.loops import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNTH = SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=0)


def config(data: Path, epochs: int, storage: str, name: str, batch_size: int | None = None):
    sets = [
        f"data.train={data / 'train'}",
        f"data.val={data / 'val'}",
        f"stage1.epochs={epochs}",
        "stage2.epochs=0",
        "stage3.epochs=0",
        f"run.storage={storage}",
        f"run.name={name}",
        f"run.output={storage}/{name}.pt",
    ]
    if batch_size is not None:
        sets.append(f"batch_size={batch_size}")
    return load_config(str(ROOT / "configs" / "demo.yaml"), sets)


def plain_epochs(cfg, threads: int) -> list[float]:
    """Images/s of each stage-I epoch of one process that reads, decodes and trains."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = GFNet(cfg.model)
    trainer = Trainer(cfg, model, "cpu")
    labels = LabelMap.build(model.class_names)
    rates = []
    for epoch in range(cfg.stage1.epochs):
        records = (r for shard in discover_shards(cfg.data.train) for r in iter_shard_records(shard))
        started = time.perf_counter()
        sums = trainer.train_epoch(
            "stage1", epoch, iter_batches(records, cfg.preprocessing, cfg.batch_size, True, labels.record_label)
        )
        rates.append(sums["images"] / (time.perf_counter() - started))
    return rates


def ray_epochs(cfg) -> tuple[list[float], list[float]]:
    """Images/s of each stage-I epoch of a Ray Train run, and the seconds each epoch waited for
    its first batch (both from the run's own per-epoch record)."""
    from gfpipe.train.run import train

    uri = train(cfg, restart=True)
    history = [h for h in load_checkpoint(uri).card.provenance["history"] if h["stage"] == "stage1"]
    return [h["images_per_s"] for h in history], [h["first_batch_seconds"] for h in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3, help="stage-I epochs per side and round (first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the demo recipe's 64)")
    args = parser.parse_args()
    tune_allocator()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "glyphs"
        write_dataset(str(data), "train", args.images, SYNTH, shard_size=500)
        write_dataset(str(data), "val", 200, SYNTH, shard_size=200)
        from gfpipe.train.run import init_ray

        init_ray()
        ratios, plain_rates, ray_rates, first_batch = [], [], [], []
        for round_index in range(args.rounds):
            cfg = config(data, args.epochs, str(Path(tmp) / "runs"), f"bench-{round_index}", args.batch_size)
            sides = ["plain", "ray"] if round_index % 2 == 0 else ["ray", "plain"]
            rates = {}
            for side in sides:
                if side == "plain":
                    epochs = plain_epochs(cfg, cores)
                else:
                    epochs, waits = ray_epochs(cfg)
                    first_batch.append(statistics.median(waits[1:]) if len(waits) > 1 else waits[0])
                rates[side] = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
            ratios.append(rates["ray"] / rates["plain"])
            plain_rates.append(rates["plain"])
            ray_rates.append(rates["ray"])
            print(
                f"round {round_index + 1}: plain {rates['plain']:.0f} images/s, ray {rates['ray']:.0f} images/s, "
                f"ratio {ratios[-1]:.3f}; Ray's first batch after {first_batch[-1]:.2f} s per epoch",
                flush=True,
            )
    figures = {
        "ray_over_plain_per_core": statistics.median(ratios),
        "spread": [min(ratios), max(ratios)],
        "plain_images_per_s": plain_rates,
        "ray_images_per_s": ray_rates,
        "ray_first_batch_seconds": first_batch,
        "cores": cores,
        "config": {
            "images": args.images,
            "epochs": args.epochs,
            "rounds": args.rounds,
            "recipe": "configs/demo.yaml stage I",
            "batch_size": args.batch_size or cfg.batch_size,
        },
    }
    print(f"machine: {machine()}")
    print(
        f"Ray Train / plain loop, per core: {figures['ray_over_plain_per_core']:.3f} "
        f"[{min(ratios):.3f}-{max(ratios):.3f}] (goal >= 0.9)"
    )
    print(f"wrote {write_results('train', figures, {'ray_over_plain_per_core': '>= 0.9'})}")


if __name__ == "__main__":
    main()
