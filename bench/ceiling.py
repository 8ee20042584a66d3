"""The budget as a ceiling, over many runs: the classify job on copies of one shifted archive.

The archive's share of small (hard) glyph targets is moved by `--shift` away from the demo
model's calibration data. Each copy lives under another path, so its image keys differ, and with
them the shadow sample and the order in which images reach the budget ledger: the spread of
cost ÷ budget over the copies is the job's landing precision. Goal: every copy within 2% of the
budget and at most 1% above it.

    PYTHONPATH=. .venv/bin/python bench/ceiling.py --images 3000 --copies 5 --shift 0.5
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


def main() -> None:
    import ray

    from gfpipe.budget.grammar import parse_budget
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.data.synthetic import SynthConfig, write_dataset
    from gfpipe.pipeline import classify

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--shift", type=float, default=0.5)
    parser.add_argument("--budget", default="9M")
    parser.add_argument("--batches-per-call", type=int, default=None)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        config = SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=1, shift=args.shift)
        write_dataset(f"{tmp}/archive", "test", args.images, config, shard_size=500)
        ray.init(address="local", logging_level=logging.WARNING)
        for copy in range(args.copies):
            data = f"{tmp}/copy-{copy}/test"
            shutil.copytree(f"{tmp}/archive/test", data)
            summary = classify(
                ClassifyConfig(
                    input=data,
                    output=f"{tmp}/copy-{copy}/out",
                    budget=parse_budget(args.budget),
                    batches_per_call=args.batches_per_call,
                    progress_seconds=3600,
                    report_samples=0,
                )
            )
            ratios.append(summary["budget"]["ratio"])
            print(f"copy {copy}: cost / budget {ratios[-1]:.4f}", flush=True)
        ray.shutdown()
    figures = {"cost_over_budget": ratios, "min": min(ratios), "max": max(ratios), "config": vars(args)}
    print(f"cost / budget over {len(ratios)} copies: {min(ratios):.4f}-{max(ratios):.4f} (goal 0.98-1.01)")
    print(f"wrote {write_results(f'ceiling_shift{args.shift:+g}', figures, {'cost_over_budget': '0.98 to 1.01'})}")


if __name__ == "__main__":
    main()
