"""`gfpipe classify`: tag an image archive under a compute budget on a Ray cluster (the main job)."""

from __future__ import annotations

import argparse
from typing import Any

from gfpipe.commands.common import (
    add_budget_arguments,
    add_official_checkpoint_arguments,
    add_storage_arguments,
    checkpoint_overrides,
    console,
    int_at_least,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", required=True, metavar="URI", help="images: shards, folder or prefix, glob or brace pattern"
    )
    parser.add_argument(
        "--output", required=True, metavar="URI", help="output folder: Parquet rows, _gfpipe/summary.json, report.html"
    )
    parser.add_argument(
        "--checkpoint", default="demo", help="gfpipe or official GFNet checkpoint, path or URI (default: demo)"
    )
    add_budget_arguments(parser, required=True)
    parser.add_argument(
        "--calibrate",
        type=int_at_least(1),
        default=0,
        metavar="N",
        help="solve the first thresholds on N images sampled from the input (label-free; their cost counts) "
        "instead of the checkpoint's calibration",
    )
    parser.add_argument("--overwrite", action="store_true", help="start over: remove what earlier runs wrote here")
    parser.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=None,
        help="images per model call (default: 256 on GPUs, 64 on CPUs)",
    )
    parser.add_argument(
        "--batches-per-call",
        type=int_at_least(1),
        default=None,
        help="model batches per actor call, the pool of hard images requeued together (default: 32 on GPUs, 4 on CPUs)",
    )
    parser.add_argument("--replicas", type=int_at_least(1), help="model actors (default: one per GPU, or from CPUs)")
    parser.add_argument(
        "--replicas-per-gpu",
        type=int_at_least(1),
        default=1,
        help="model actors sharing each GPU, so one's host work overlaps another's kernels (default: 1)",
    )
    parser.add_argument("--cpus-per-replica", type=float, help="CPUs per model actor (default: from the cluster)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    parser.add_argument("--no-bf16", action="store_true", help="on GPUs: run in fp32 instead of bf16 autocast")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "wds", "parquet", "folder"], help="input format (auto: from names)"
    )
    parser.add_argument("--image-column", default="image", help="Parquet input: the column holding image bytes")
    parser.add_argument("--key-column", default=None, help="Parquet input: a column of unique image keys")
    parser.add_argument("--top-k", type=int_at_least(1), default=5, help="classes per row in topk_labels/topk_probs")
    parser.add_argument(
        "--stall-timeout",
        type=_duration,
        default=900.0,
        metavar="DURATION",
        help="fail when no image has finished for this long, e.g. 15m (a lost node can leave the job "
        "waiting forever for resources; re-running resumes); 0 waits forever",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    add_official_checkpoint_arguments(parser)
    add_storage_arguments(parser)


def _duration(text: str) -> float:
    from gfpipe.budget.grammar import parse_duration

    if text.strip() == "0":
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from gfpipe.classify.config import ClassifyConfig
    from gfpipe.commands.common import storage_options_from_args
    from gfpipe.data.shards import ReadOptions
    from gfpipe.pipeline import classify

    options = storage_options_from_args(args, args.input, args.output, args.checkpoint)
    overrides = checkpoint_overrides(args)
    if args.cpus_per_replica is not None and args.cpus_per_replica <= 0:
        raise ValueError(f"--cpus-per-replica must be > 0, got {args.cpus_per_replica:g}")
    config = ClassifyConfig(
        input=args.input,
        output=args.output,
        budget=args.budget,
        checkpoint=args.checkpoint,
        checkpoint_overrides=overrides,
        read_options=ReadOptions(format=args.format, image_column=args.image_column, key_column=args.key_column),
        storage_options=options,
        calibrate=args.calibrate,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        batches_per_call=args.batches_per_call,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        replicas_per_gpu=args.replicas_per_gpu,
        device=args.device,
        bf16=not args.no_bf16,
        top_k=args.top_k,
        address=args.address,
        stall_seconds=args.stall_timeout,
    )
    summary = classify(config)
    console.print(summary_text(summary))
    return 0


OVER_BUDGET_NOTE = 1.01  # the job's promise: never more than 1% above the budget (on runs large enough)


def summary_text(summary: dict[str, Any]) -> str:
    """The few lines a user reads at the end of a run."""
    from gfpipe.budget.grammar import format_amount

    budget = summary["budget"]
    shards = summary["shards"]
    exits = ", ".join(f"step {t}: {n}" for t, n in enumerate(summary["exits"], 1))
    ratio = budget["ratio"]
    lines = [
        f"classified {summary['images']} images ({summary['errors']} error rows) in {shards['total']} shards: "
        f"{shards['classified']} this run, {shards['skipped_done']} already done, "
        f"{shards['redone_changed']} redone because they changed",
        f"exits: {exits}",
        f"cost: {format_amount(budget['realized_macs_per_image'])} per image vs budget "
        f"{format_amount(budget['target_macs_per_image'])} ({'n/a' if ratio is None else f'{100 * ratio:.1f}%'})",
        f"this run: {summary['elapsed_s']:.1f} s, {summary['images_per_s'] or 0:.1f} images/s",
    ]
    if ratio is not None and ratio > OVER_BUDGET_NOTE:
        lines.append(
            f"note: {100 * (ratio - 1):.1f}% over the budget. The online control corrects thresholds that do not fit "
            "the archive within a few hundred images; on fewer, the checkpoint's calibration decides. Calibrate on "
            "the archive itself with --calibrate N, or expect small runs to land less exactly"
        )
    lines += [
        f"rows: {summary['output']} (Parquet)",
        f"summary: {summary['output'].rstrip('/')}/_gfpipe/summary.json",
        f"report: {summary['output'].rstrip('/')}/report.html",
    ]
    return "\n".join(lines)
