"""One shard 10x larger than the rest: does it idle the cluster? (not CI)

Two archives of the same size, the demo geometry (seed 1):
  balanced  16 shards of 500 images (8000);
  skewed    15 shards of 320 and one of 3200 (8000), the large one listed last (the worst order).
Each round classifies the balanced archive, the skewed one, and the skewed one again the naive way
(`unsplit`: one read task per shard, in listing order: no pieces, no largest first), with
the classify job (the demo model, budget 9M, local Ray), in rotating order after one warm-up
job; the figures are skewed / balanced and unsplit / balanced wall time per round, the median
over rounds with the spread. Goal: skewed <= 1.3.

`--cpus N` starts the local Ray with N logical CPUs (more than the machine has: more replicas and
read tasks, the shape of a larger cluster, on the same cores).

    PYTHONPATH=. .venv/bin/python bench/skew.py [--rounds 3] [--cpus 8]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402
from pipeline import job  # noqa: E402

import gfpipe.classify.state as state  # noqa: E402
from gfpipe.data.synthetic import SynthConfig, write_dataset  # noqa: E402

GLYPHS = SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=1)


def build(folder: Path, parts: list[tuple[str, int, int]]) -> str:
    """Shards of the given (name, images, shard size) groups, side by side in folder/archive."""
    archive = folder / "archive"
    archive.mkdir(parents=True)
    for name, count, shard_size in parts:
        write_dataset(str(folder / "src"), name, count, GLYPHS, shard_size=shard_size)
        for tar in sorted((folder / "src" / name).glob("*.tar")):
            shutil.move(str(tar), archive / f"{name}-{tar.name}")
    shutil.rmtree(folder / "src")
    return str(archive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cpus", type=float, default=None, help="logical CPUs of the local Ray (default: the machine's)"
    )
    parser.add_argument("--budget", default="9M")
    args = parser.parse_args()
    import ray

    if args.cpus:
        ray.init(address="local", num_cpus=args.cpus)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archives = {
            "balanced": build(root / "balanced", [("a", 8000, 500)]),
            # "z" sorts last: the large shard starts after every small one
            "skewed": build(root / "skewed", [("a", 4800, 320), ("z", 3200, 3200)]),
        }
        archives["unsplit"] = archives["skewed"]
        job(archives["balanced"], str(root / "out-warmup"), args.budget, None)  # Ray up, caches warm
        names = ["balanced", "skewed", "unsplit"]
        seconds: dict[str, list[float]] = {name: [] for name in names}
        ratios: dict[str, list[float]] = {"skewed": [], "unsplit": []}
        for r in range(args.rounds):
            took = {}
            for name in names[r % 3 :] + names[: r % 3]:
                with unsplit() if name == "unsplit" else contextlib.nullcontext():
                    started = time.perf_counter()
                    _, summary = job(archives[name], str(root / f"out-{name}"), args.budget, None)
                    took[name] = time.perf_counter() - started
                assert summary["images"] == 8000, summary["images"]
                seconds[name].append(took[name])
            for name in ratios:
                ratios[name].append(took[name] / took["balanced"])
            print(
                f"round {r + 1}: balanced {took['balanced']:.1f} s, skewed {took['skewed']:.1f} s "
                f"(ratio {ratios['skewed'][-1]:.3f}), unsplit {took['unsplit']:.1f} s "
                f"(ratio {ratios['unsplit'][-1]:.3f})",
                flush=True,
            )
    figures = {
        "skewed_over_balanced": statistics.median(ratios["skewed"]),
        "spread": [min(ratios["skewed"]), max(ratios["skewed"])],
        "unsplit_over_balanced": statistics.median(ratios["unsplit"]),
        "unsplit_spread": [min(ratios["unsplit"]), max(ratios["unsplit"])],
        "seconds": seconds,
        "cpus": args.cpus or "machine",
        "config": {"images": 8000, "balanced": "16 x 500", "skewed": "15 x 320 + 1 x 3200 (last)"},
    }
    print(f"machine: {machine()}")
    for name in ratios:
        values = ratios[name]
        print(f"{name} / balanced wall time: {statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
    print(f"wrote {write_results('skew', figures, {'skewed_over_balanced': '<= 1.3'})}")


@contextlib.contextmanager
def unsplit():
    """The naive job: one read task per shard, in listing order (no pieces, no largest first)."""
    real = state.ShardPlan.read_items

    def listing_order(plan, read_tasks):
        return [{"uri": s.uri, "format": s.format, "sid": sid, "piece": 0, "pieces": 1} for s, sid, _ in plan.todo]

    state.ShardPlan.read_items = listing_order
    try:
        yield
    finally:
        state.ShardPlan.read_items = real


if __name__ == "__main__":
    main()
