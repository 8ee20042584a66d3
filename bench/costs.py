"""Per-step cumulative MACs of GFNet configurations, and measured CPU time per step next to the
full-resolution backbone's, as ratios from one run.

Each round times the plain backbone on full-resolution images (the variant's input size) and
every GFNet step on the same batch size back to back, the order alternating between rounds; the
time ratios are the median of the per-round ratios with their min-max spread.

    PYTHONPATH=. python bench/costs.py [--batch 16] [--repeats 3]     (ResNet-50, MobileNet-V3-Large)
    PYTHONPATH=. python bench/costs.py --family densenet regnety      (one variant per family; see --help)
    PYTHONPATH=. python bench/costs.py --all-families
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FAMILIES, Variant, machine, write_results  # noqa: E402

from gfpipe.budget.costs import measure_step_seconds, part_costs  # noqa: E402
from gfpipe.model import GFNet, GFNetConfig, build_backbone  # noqa: E402

CONFIGS = [
    Variant("ResNet-50", "resnet50", 96, 5),
    Variant("ResNet-50", "resnet50", 128, 5),
    Variant("MobileNet-V3-Large", "mobilenetv3_large_100", 96, 3),
    Variant("MobileNet-V3-Large", "mobilenetv3_large_100", 128, 3),
]


def gfnet_config(variant: Variant, patch: int | None = None, T: int | None = None) -> GFNetConfig:
    """The variant's GFNet for 1000 classes (or its backbone alone: `patch` = input size, T = 1)."""
    return GFNetConfig(
        backbone=variant.arch,
        num_classes=1000,
        input_size=variant.input_size,
        patch_size=patch or variant.patch,
        T=T or variant.T,
    )


def full_resolution_macs(variant: Variant) -> float:
    """MACs of the plain backbone on one image at the variant's input size."""
    return part_costs(gfnet_config(variant, patch=variant.input_size, T=1)).glance_encoder


@torch.no_grad()
def seconds_per_image(net: torch.nn.Module, x: torch.Tensor) -> float:
    """One timed call of `net` on the batch `x`, per image."""
    start = time.perf_counter()
    net(x)
    return (time.perf_counter() - start) / len(x)


def timed_rounds(variant: Variant, batch: int, rounds: int) -> list[tuple[float, list[float]]]:
    """Per round: (full-resolution seconds per image, cumulative seconds per image after step 1..T).

    The backbone runs first in even rounds, the GFNet steps first in odd ones.
    """
    net = build_backbone(variant.arch).eval()
    x = torch.randn(batch, 3, variant.input_size, variant.input_size)
    model = GFNet(gfnet_config(variant)).eval()

    def full() -> float:
        return seconds_per_image(net, x)

    def steps() -> list[float]:
        return measure_step_seconds(model, batch, warmup=0, repeats=1)

    full(), steps()  # warm-up
    out = []
    for r in range(rounds):
        if r % 2 == 0:
            full_sec = full()
            step_sec = steps()
        else:
            step_sec = steps()
            full_sec = full()
        out.append((full_sec, step_sec))
    return out


def spread(values: list[float]) -> tuple[float, list[float]]:
    """(median, [min, max]) over rounds."""
    return statistics.median(values), [min(values), max(values)]


def fmt(median: float, span: list[float], digits: int = 3) -> str:
    """median [min–max], as BENCHMARKS.md writes a spread."""
    return f"{median:.{digits}f} [{span[0]:.{digits}f}–{span[1]:.{digits}f}]"


def measure(variant: Variant, batch: int, rounds: int) -> dict:
    """Counted MACs and the per-round time ratios of one variant, as a results entry."""
    costs = part_costs(gfnet_config(variant)).cumulative()
    full_macs = full_resolution_macs(variant)
    timed = timed_rounds(variant, batch, rounds)
    full_ms, full_ms_span = spread([f * 1e3 for f, _ in timed])
    rows = []
    for t, c in enumerate(costs):
        ms, ms_span = spread([s[t] * 1e3 for _, s in timed])
        over_full, over_full_span = spread([s[t] / f for f, s in timed])
        rows.append(
            {
                "step": t + 1,
                "gmacs": c / 1e9,
                "macs_over_full": c / full_macs,
                "ms_per_image": ms,
                "time_over_full": over_full,
                "spread": {"ms_per_image": ms_span, "time_over_full": over_full_span},
            }
        )
    return {
        "label": variant.label,
        "backbone": variant.arch,
        "patch_size": variant.patch,
        "T": variant.T,
        "input_size": variant.input_size,
        "batch": batch,
        "rounds": rounds,
        "full_gmacs": full_macs / 1e9,
        "full_ms_per_image": full_ms,
        "full_ms_per_image_spread": full_ms_span,
        "steps": rows,
    }


def table(result: dict) -> list[str]:
    """The result as BENCHMARKS.md's markdown: a heading line, then one row per exit step."""
    size = result["input_size"]
    full_ms = fmt(result["full_ms_per_image"], result["full_ms_per_image_spread"], 1)
    lines = [
        f"{result['label']}, p = {result['patch_size']}, T = {result['T']}"
        + (f", input {size}" if size != 224 else "")
        + f" (batch {result['batch']}, {result['rounds']} rounds; full-resolution {result['backbone']} at {size}: "
        f"{result['full_gmacs']:.3f} GMACs, {full_ms} ms/image):",
        "",
        "| exit after step | GMACs | MACs / full | ms/image | time / full |",
        "|---|---|---|---|---|",
    ]
    for row in result["steps"]:
        ms = fmt(row["ms_per_image"], row["spread"]["ms_per_image"], 1)
        ratio = fmt(row["time_over_full"], row["spread"]["time_over_full"])
        lines.append(f"| {row['step']} | {row['gmacs']:.3f} | {row['macs_over_full']:.3f} | {ms} | {ratio} |")
    return lines


def variants(args: argparse.Namespace) -> list[Variant]:
    """The configurations to measure: the chosen families' variants, else the ResNet-50 and
    MobileNet-V3-Large tables."""
    if args.all_families:
        return list(FAMILIES.values())
    if args.family:
        return [FAMILIES[name] for name in args.family]
    return CONFIGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="rounds (backbone and steps in each)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--family",
        nargs="+",
        choices=sorted(FAMILIES),
        help="one variant of each named family: "
        + "; ".join(f"{name}: {variant}" for name, variant in FAMILIES.items()),
    )
    choice.add_argument("--all-families", action="store_true", help="every family's variant (as --family)")
    parser.add_argument("--name", default="costs", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    results = []
    for variant in variants(args):
        results.append(measure(variant, args.batch, args.repeats))
        print("\n" + "\n".join(table(results[-1])), flush=True)
    path = write_results(args.name, {"configs": results, "method": "median [min-max] of per-round ratios"})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
