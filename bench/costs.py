"""Per-step cumulative MACs of GFNet configurations, and measured CPU time per step next to the
full-resolution backbone's, as ratios from one run.

    PYTHONPATH=. python bench/costs.py [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from gfpipe.budget.costs import measure_step_seconds, part_costs  # noqa: E402
from gfpipe.model import GFNet, GFNetConfig, build_backbone  # noqa: E402

CONFIGS = [
    ("resnet50", 96, 5),
    ("resnet50", 128, 5),
    ("mobilenetv3_large_100", 96, 3),
    ("mobilenetv3_large_100", 128, 3),
]


@torch.no_grad()
def full_resolution_seconds(backbone: str, batch: int, repeats: int) -> tuple[float, float]:
    """(MACs, seconds per image) of the plain backbone on 224 x 224 images at `batch`."""
    net = build_backbone(backbone).eval()
    x = torch.randn(batch, 3, 224, 224)
    net(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    macs = part_costs(GFNetConfig(backbone=backbone, num_classes=1000, patch_size=224, T=1)).glance_encoder
    return macs, sorted(times)[len(times) // 2] / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    results = []
    full = {}
    for backbone, patch, T in CONFIGS:
        if backbone not in full:
            full[backbone] = full_resolution_seconds(backbone, args.batch, args.repeats)
        full_macs, full_sec = full[backbone]
        model = GFNet(GFNetConfig(backbone=backbone, num_classes=1000, patch_size=patch, T=T)).eval()
        costs = part_costs(model).cumulative()
        seconds = measure_step_seconds(model, args.batch, warmup=1, repeats=args.repeats)
        print(
            f"\n{backbone} p={patch} T={T} (batch {args.batch}); full-resolution {backbone} at 224: "
            f"{full_macs / 1e9:.3f} GMACs, {full_sec * 1e3:.1f} ms/image"
        )
        print(f"{'exit step':>9} {'GMACs':>8} {'MACs/full':>10} {'ms/image':>9} {'time/full':>10}")
        rows = []
        for t, (c, s) in enumerate(zip(costs, seconds, strict=True), 1):
            rows.append(
                {
                    "step": t,
                    "gmacs": c / 1e9,
                    "macs_over_full": c / full_macs,
                    "ms_per_image": s * 1e3,
                    "time_over_full": s / full_sec,
                }
            )
            print(f"{t:>9} {c / 1e9:>8.3f} {c / full_macs:>10.3f} {s * 1e3:>9.1f} {s / full_sec:>10.3f}")
        results.append(
            {
                "backbone": backbone,
                "patch_size": patch,
                "T": T,
                "batch": args.batch,
                "full_gmacs": full_macs / 1e9,
                "full_ms_per_image": full_sec * 1e3,
                "steps": rows,
            }
        )
    path = write_results("costs", {"configs": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
