"""`gfpipe evaluate`: anytime and budgeted accuracy of a checkpoint on labelled data."""

from __future__ import annotations

import argparse
from typing import Any

from gfpipe.commands.common import (
    add_budget_arguments,
    add_device_argument,
    add_official_checkpoint_arguments,
    add_storage_arguments,
    checkpoint_overrides,
    console,
    int_at_least,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="gfpipe or official GFNet checkpoint (path or URI)")
    parser.add_argument(
        "--data", required=True, help="labelled images: shards, folder or prefix, glob or brace pattern"
    )
    parser.add_argument("--out", required=True, help="output folder URI for evaluate.json and accuracy_vs_macs.png")
    parser.add_argument(
        "--calibration",
        help="separate data to solve thresholds on (default: the checkpoint's "
        "calibration, else the evaluation data itself)",
    )
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per model call")
    add_device_argument(parser)
    parser.add_argument(
        "--points", type=int_at_least(2), default=20, help="budgets in the sweep, glance-only to all steps"
    )
    add_budget_arguments(parser)
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "wds", "parquet", "folder"],
        help="input format (auto: from file extensions)",
    )
    parser.add_argument(
        "--class-folders",
        action="store_true",
        help="image folders: the first sub-folder under --data names each image's class",
    )
    add_official_checkpoint_arguments(parser)
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gfpipe.budget.costs import step_costs
    from gfpipe.checkpoint import load_checkpoint
    from gfpipe.commands.common import resolve_device, storage_options_from_args
    from gfpipe.data import ReadOptions, discover_shards, read_images
    from gfpipe.data.io import ensure_writable
    from gfpipe.data.labels import LabelMap, dataset_class_names
    from gfpipe.data.shards import count_images
    from gfpipe.evaluate import evaluate, save_outputs
    from gfpipe.progress import Progress

    # Everything that can be wrong is checked before the pass over the data.
    device = resolve_device(args.device)
    options = storage_options_from_args(args, args.data, args.out, args.checkpoint, args.calibration)
    ensure_writable(args.out, options)
    overrides = checkpoint_overrides(args)
    model = load_checkpoint(args.checkpoint, device=device, storage_options=options, **overrides)
    label_map = LabelMap.build(
        model.class_names, None if args.class_folders else dataset_class_names(args.data, options)
    )
    read_options = ReadOptions(
        format=args.format,
        class_folders=args.class_folders,
        class_names=label_map.read_class_names,
        strict_classes=args.class_folders,
    )
    shards = discover_shards(args.data, options, read_options)
    calibration_shards = discover_shards(args.calibration, options, read_options) if args.calibration else None
    if args.class_folders and any(shard.format != "folder" for shard in shards):
        raise ValueError(
            f"--class-folders is for image folders, but {args.data} holds {shards[0].format} shards "
            "(their labels come from the shards and classes.txt); drop --class-folders"
        )
    total = _total(shards, options, read_options, count_images)
    budget, costs = args.budget, step_costs(model)
    checkable = budget is not None and (budget.kind == "mean" or (budget.kind == "total" and total))
    if checkable and budget.per_image(num_images=total) < costs[0]:
        budget.resolve(costs, num_images=total)  # raises now, not after the pass over the data

    def records(selected):
        return read_images(selected, options, options=read_options, draft_size=model.card.preprocessing.resize)

    with Progress(f"evaluating {args.data}", total) as progress:
        result = evaluate(
            model,
            records(shards),
            records(calibration_shards) if calibration_shards else None,
            args.batch_size,
            device,
            args.points,
            args.budget,
            label_of=label_map.record_label,
            progress=progress,
        )
    result.update(checkpoint=str(args.checkpoint), data=args.data, class_names=list(model.class_names))
    written = save_outputs(result, args.out, f"{model.config.backbone} on {args.data}", options)
    console.print(format_table(result))
    console.print(f"wrote {', '.join(written)}")
    return 0


def _total(shards: list, options: Any, read_options: Any, count_images: Any) -> int | None:
    """Images in the shards, where their metadata tells cheaply; None when any shard does not."""
    total = 0
    for shard in shards:
        n = count_images(shard, options, read_options)
        if n is None:
            return None
        total += n
    return total


def format_table(result: dict[str, Any]) -> str:
    from gfpipe.budget.costs import format_macs

    errors = result["errors"]
    lines = [
        f"{result['images']} images ({result['labelled']} labelled, {errors['total']} unusable); "
        f"thresholds from {result['threshold_source']}"
    ]
    for example in errors["examples"]:
        lines.append(f"  unusable: {example['key']}: {example['error']}")
    if result["anytime_accuracy"]:
        lines.append(
            "anytime accuracy: "
            + "  ".join(
                f"step {t} ({format_macs(c)}): {100 * a:.2f}%"
                for t, (c, a) in enumerate(zip(result["step_macs"], result["anytime_accuracy"], strict=True), 1)
            )
        )
    lines.append(f"{'budget':>10} {'mean MACs':>10} {'accuracy':>9}  exits per step")
    for r in result["budgeted"]:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        lines.append(f"{format_macs(r['target_macs']):>10} {format_macs(r['mean_macs']):>10} {acc:>9}  {r['exits']}")
    chosen = result.get("at_budget")
    if chosen:
        acc = "-" if chosen["accuracy"] is None else f"{100 * chosen['accuracy']:.2f}%"
        lines.append(f"{chosen['budget']}: {chosen['message']}")
        lines.append(
            f"  mean MACs {format_macs(chosen['mean_macs'])}, accuracy {acc}, exits {chosen['exits']}, "
            f"thresholds {[round(e, 4) for e in chosen['thresholds']]}"
        )
    return "\n".join(lines)
