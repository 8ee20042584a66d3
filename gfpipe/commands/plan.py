"""`gfpipe plan`: what a classify job will cost, how fast it runs, and how many devices it needs.

Forward (a budget given): expected cost per image, exit shares, accuracy (from labelled
calibration data), images/s per device, device-hours, and the devices that finish within
`--window` (or the wall clock on `--devices`). Inverse (no budget; `--devices` and `--window`): the
largest budget that finishes in time. The model is `gfpipe.capacity`'s; docs/capacity-planning.md
explains it and how to calibrate it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any

from gfpipe.commands.common import (
    add_budget_arguments,
    add_official_checkpoint_arguments,
    add_storage_arguments,
    checkpoint_overrides,
    console,
    float_between,
    int_at_least,
)

_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def _duration(text: str) -> float:
    from gfpipe.budget.grammar import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:  # the budget grammar's message, its examples made plain durations
        raise argparse.ArgumentTypeError(
            str(exc).replace("time budget", "duration").replace("--budget-time ", "")
        ) from None


def _seconds_list(text: str) -> tuple[float, ...]:
    """'0.18ms,0.35ms,0.52ms' or '1.8e-4,3.5e-4,5.2e-4' (seconds) -> seconds."""
    values = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*(s|ms|us)?\s*", part)
        if not match:
            raise argparse.ArgumentTypeError(
                f"cannot read {text!r}: expected cumulative seconds per image for exiting after step 1..T, "
                "comma-separated, e.g. 0.18ms,0.35ms,0.52ms or 1.8e-4,3.5e-4,5.2e-4"
            )
        values.append(float(match.group(1)) * _UNITS[match.group(2) or ""])
    return tuple(values)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gfpipe.capacity import ACTOR_SECONDS, FIXED_SECONDS, PIPELINE_CORE_SECONDS

    parser.add_argument("--checkpoint", default="demo", help="gfpipe or official GFNet checkpoint, path or URI")
    parser.add_argument(
        "--images",
        required=True,
        metavar="N|URI",
        help="the archive: a number of images (10M, 2.5e6) or its URI, counted from metadata as --budget-total does",
    )
    add_budget_arguments(parser, kinds=("mean", "total"))
    parser.add_argument(
        "--window", type=_duration, metavar="DURATION", help="the job must finish within this: 8h, 90m, 1d12h"
    )
    parser.add_argument(
        "--devices",
        type=int_at_least(1),
        help="GPUs (or CPU model replicas) the job gets; with --window and no budget: find the largest budget",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="the kind of device to plan for, and to measure on here unless --step-seconds/--images-per-s are given "
        "(auto: cuda when a GPU is visible)",
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument(
        "--step-seconds",
        type=_seconds_list,
        metavar="S1,...,ST",
        help="cumulative seconds per image of exiting after step 1..T on one target device at full batches, "
        "e.g. 0.18ms,0.35ms,0.52ms (default: measured here now)",
    )
    speed.add_argument(
        "--images-per-s",
        type=_positive,
        metavar="RATE",
        help="all-steps images/s of one target device at full batches; each step takes its share of MACs",
    )
    parser.add_argument(
        "--engine-efficiency",
        type=float_between(0.01, 1.5),
        help="share of the full-batch speed the engine reaches in the actor's calls (default: probed here when "
        "measuring; else 0.96 on CPU, 0.71 on GPU, from bench/engine.py)",
    )
    parser.add_argument(
        "--decode-images-per-s",
        type=_positive,
        metavar="RATE",
        help="images/s one read task reads and decodes (default: measured here on the archive when --images is a "
        "URI; not counted otherwise)",
    )
    parser.add_argument("--node-cpus", type=_positive, help="CPUs per node (default: this machine's)")
    parser.add_argument(
        "--node-gpus", type=int_at_least(0), help="GPUs per node (default: this machine's; 1 with --device cuda here)"
    )
    parser.add_argument("--replicas", type=int_at_least(1), help="model replicas per node (default: as classify)")
    parser.add_argument("--cpus-per-replica", type=_positive, help="CPUs per model replica (default: as classify)")
    parser.add_argument(
        "--replicas-per-gpu", type=int_at_least(1), default=1, help="model replicas sharing each GPU (as classify)"
    )
    parser.add_argument(
        "--batch-size", type=int_at_least(1), help="images per model call (default: 256 on GPUs, 64 on CPUs)"
    )
    parser.add_argument(
        "--batches-per-call", type=int_at_least(1), help="model batches per actor call (default: 32 on GPUs, 4 on CPUs)"
    )
    parser.add_argument(
        "--fixed-seconds",
        type=_non_negative,
        default=FIXED_SECONDS,
        metavar="S",
        help="seconds per run besides the images: start-up and finish, with Ray already up",
    )
    parser.add_argument(
        "--actor-ms",
        type=_non_negative,
        default=ACTOR_SECONDS * 1e3,
        metavar="MS",
        help="milliseconds per image the job's actor spends beyond its engine (rows, Parquet parts, ledger syncs)",
    )
    parser.add_argument(
        "--pipeline-ms",
        type=_non_negative,
        default=PIPELINE_CORE_SECONDS * 1e3,
        metavar="MS",
        help="core-milliseconds per image of the driver, the ledger and Ray beyond the model and decoding",
    )
    parser.add_argument(
        "--probe-calls", type=int_at_least(1), default=2, help="actor-sized calls the engine probe times"
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "wds", "parquet", "folder"],
        help="archive format (auto: from names)",
    )
    parser.add_argument("--image-column", default="image", help="Parquet archive: the column holding image bytes")
    parser.add_argument("--key-column", default=None, help="Parquet archive: a column of unique image keys")
    parser.add_argument(
        "--json", action="store_true", help="print the plan as JSON on stdout (the table then goes to stderr)"
    )
    add_official_checkpoint_arguments(parser)
    add_storage_arguments(parser)


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from gfpipe import capacity as cap
    from gfpipe.budget.costs import step_costs
    from gfpipe.checkpoint import load_checkpoint
    from gfpipe.commands.common import storage_options_from_args

    budget = args.budget
    if budget is None and not (args.devices and args.window):
        raise ValueError(
            "give --budget (or --budget-total) to plan a budget, or --devices and --window (no budget) to find the "
            "largest budget that finishes in time"
        )
    uri = None if _is_count(args.images) else args.images
    options = storage_options_from_args(args, *(u for u in (uri, args.checkpoint) if u))
    given_speed = args.step_seconds is not None or args.images_per_s is not None
    device = _device(args.device, measuring=not given_speed)
    from gfpipe.data.shards import ReadOptions

    read_options = ReadOptions(format=args.format, image_column=args.image_column, key_column=args.key_column)
    images, shards = _archive(args.images, options, read_options)
    model = load_checkpoint(args.checkpoint, storage_options=options, **checkpoint_overrides(args))
    costs = step_costs(model)
    scores, predictions, labels, source = cap.calibration_of(model)
    per_image = budget.per_image(images) if budget is not None else None
    gpus = args.node_gpus if args.node_gpus is not None else _gpus_here(device)
    node = cap.node_pool(
        device,
        args.node_cpus or float(os.cpu_count() or 1),
        gpus,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        replicas_per_gpu=args.replicas_per_gpu,
        batch_size=args.batch_size,
        batches_per_call=args.batches_per_call,
    )
    decode, decode_source = _decode(args, shards, model, options, read_options)
    job = cap.JobCosts(
        fixed_seconds=args.fixed_seconds,
        actor_seconds=args.actor_ms * 1e-3,
        pipeline_core_seconds=args.pipeline_ms * 1e-3,
        decode_seconds=decode,
        decode_source=decode_source,
    )
    common = {
        "images": images,
        "costs": costs,
        "scores": scores,
        "node": node,
        "job": job,
        "predictions": predictions,
        "labels": labels,
    }
    if given_speed:
        speed = _given_speed(args, costs, node)
        probe = None
    else:
        exits = cap.expected_exits(costs, scores, per_image) if per_image is not None else None
        speed, probe = cap.measure_speed(
            model, device, node, exits=None if args.engine_efficiency else exits, probe_calls=args.probe_calls
        )
        if args.engine_efficiency:
            speed = _fixed_efficiency(speed, args.engine_efficiency)
            probe = None
    if per_image is not None:
        plan = cap.plan_budget(budget=per_image, speed=speed, window=args.window, devices=args.devices, **common)
    else:
        plan = cap.best_budget(devices=args.devices, window=args.window, speed=probe or speed, **common)
    lines = plan_text(plan, model_name(model, args.checkpoint), source, uri)
    if args.json:
        for line in lines:
            print(line, file=sys.stderr)
        console.print(json.dumps({**plan.to_dict(), "checkpoint": args.checkpoint, "calibration": source}, indent=2))
    else:
        for line in lines:
            console.print(line)
    return 0


def _is_count(text: str) -> bool:
    from gfpipe.budget.grammar import parse_amount

    try:
        parse_amount(text)
    except ValueError:
        return False
    return True


def _archive(text: str, options: dict[str, Any] | None, read_options: Any) -> tuple[int, list[Any]]:
    """(images, shards): a number as given, or an archive counted from metadata."""
    from gfpipe.budget.grammar import parse_amount

    if re.fullmatch(r"[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?[A-Za-z]?", text.strip()) and not _is_count(text):
        raise ValueError(f"--images {text}: give a positive number of images (e.g. 10M) or an archive URI")
    if _is_count(text):
        value = parse_amount(text, "image count", "--images 10M, --images 2.5e6")
        if value != int(value) or value < 1:
            raise ValueError(f"--images {text} is not a whole number of images")
        return int(value), []
    from gfpipe.data.shards import count_images, discover_shards

    shards = discover_shards(text, options, read_options)
    total = 0
    for shard in shards:
        n = count_images(shard, options, read_options)
        if n is None:
            raise ValueError(
                f"--images {text}: {shard.uri} cannot be counted cheaply (a compressed tar, or a remote tar without "
                "gfpipe's _manifest.json); give the number of images instead, e.g. --images 10M"
            )
        total += n
    if not total:
        raise ValueError(f"--images {text}: the archive holds no images")
    return total, shards


def _device(choice: str, measuring: bool) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and measuring and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: no GPU is visible here to measure on; run gfpipe plan on a GPU node, or give the GPU's "
            "--step-seconds (docs/capacity-planning.md)"
        )
    return choice


def _gpus_here(device: str) -> int:
    import torch

    if device != "cuda":
        return 0
    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)


def _decode(
    args: argparse.Namespace, shards: list[Any], model: Any, options: Any, read_options: Any
) -> tuple[float | None, str]:
    from gfpipe.capacity import measure_decode

    if args.decode_images_per_s:
        return 1.0 / args.decode_images_per_s, "given"
    if not shards:
        return None, "not counted (give --images URI to measure it, or --decode-images-per-s)"
    seconds, timed = measure_decode(
        shards, model.card.preprocessing, storage_options=options, read_options=read_options
    )
    return seconds, f"measured now on {timed} images of the archive"


def _given_speed(args: argparse.Namespace, costs: list[float], node: Any) -> Any:
    from gfpipe.capacity import ENGINE_EFFICIENCY, Speed, step_seconds_from_rate

    if args.step_seconds is not None:
        seconds, source = args.step_seconds, "given (--step-seconds)"
        if len(seconds) != len(costs):
            raise ValueError(f"--step-seconds has {len(seconds)} values; this model has T = {len(costs)} steps")
    else:
        seconds = step_seconds_from_rate(costs, args.images_per_s)
        source = f"given: {args.images_per_s:g} images/s all steps, split by MACs"
    efficiency = args.engine_efficiency or ENGINE_EFFICIENCY[node.device]
    return Speed(
        device=node.device,
        step_seconds=tuple(seconds),
        engine_efficiency=efficiency,
        threads=node.threads,
        source=source,
        engine_source="given (--engine-efficiency)" if args.engine_efficiency else "default (bench/engine.py figures)",
    )


def _fixed_efficiency(speed: Any, efficiency: float) -> Any:
    import dataclasses

    return dataclasses.replace(speed, engine_efficiency=efficiency, engine_source="given (--engine-efficiency)")


def model_name(model: Any, checkpoint: str) -> str:
    cfg = model.config
    return f"{checkpoint} ({cfg.backbone}, T {cfg.T}, {cfg.num_classes} classes)"


# ----------------------------------------------------------------------------- output


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plan_text(plan: Any, name: str, calibration: str, uri: str | None) -> list[str]:
    """The table `gfpipe plan` prints."""
    from gfpipe.budget.grammar import format_amount, format_duration
    from gfpipe.capacity import BOUND_WORDS

    ex, speed, node, rate, job = plan.exits, plan.speed, plan.node, plan.rate, plan.job
    costs = plan.costs
    word = node.devices_word
    hours_word = "GPU-hours" if node.device == "cuda" else "CPU-replica-hours"
    archive = f" ({uri})" if uri else ""
    rows: list[tuple[str, str]] = []
    if plan.mode == "best budget":
        rows.append(
            (
                "best budget",
                f"{format_amount(ex.budget)} per image: the largest that finishes within "
                f"{format_duration(plan.window)} on {plan.devices} {word}(s)",
            )
        )
    else:
        rows.append(("budget", f"{format_amount(ex.budget)} per image"))
    rows.append(
        (
            "cost range",
            f"glance only {format_amount(costs[0], like=costs[-1])}, all {len(costs)} steps {format_amount(costs[-1])}",
        )
    )
    rows.append(
        (
            "expected cost",
            f"{format_amount(ex.mean_macs, like=costs[-1])} per image ({100 * ex.mean_macs / ex.budget:.1f}% of the "
            f"budget; {100 * ex.shadow_share:g}% shadow images run all steps)",
        )
    )
    rows.append(("exits", "  ".join(f"step {t}: {100 * q:.1f}%" for t, q in enumerate(ex.shares, 1))))
    if ex.accuracy is None:
        rows.append(("accuracy", "unknown: calibration data has no labels"))
    else:
        rows.append(("accuracy", f"{100 * ex.accuracy:.1f}% on the calibration data ({calibration})"))
    if node.device == "cuda":
        where = f"{node.cpus:g} CPUs, {node.gpus} GPUs: {node.replicas} model replica(s)"
        where += f" ({node.replicas_per_gpu} per GPU)"
    else:
        where = f"{node.cpus:g} CPUs: {node.replicas} model replica(s)"
    threads = f", {node.threads} thread(s)" if node.device == "cpu" else ""
    rows.append(
        (
            "node",
            f"{where} of {node.cpus_per_replica:g} CPU{threads}, {node.read_tasks} read task(s); batches of "
            f"{node.batch_size} x {node.batches_per_call} per call",
        )
    )
    steps = " / ".join(_ms(s) for s in speed.step_seconds)
    rows.append(("step seconds", f"{steps} per image at full batches ({speed.source})"))
    rows.append(("engine", f"{speed.engine_efficiency:.3f} of full-batch speed ({speed.engine_source})"))
    rows.append(
        (
            "per image",
            f"{_ms(rate.model_seconds)} at full batches, {_ms(rate.replica_seconds)} in the job's actor "
            f"(+{_ms(job.actor_seconds)} rows, parts, ledger)",
        )
    )
    if job.decode_seconds is None:
        rows.append(("decoding", job.decode_source))
    else:
        rows.append(("decoding", f"{_ms(job.decode_seconds)} per image per read task ({job.decode_source})"))
    others = ", ".join(f"{k} {_rate(v)}/s" for k, v in rate.bounds.items() if k != rate.bound)
    rows.append(
        (
            f"per {word}",
            f"{_rate(rate.per_device_images_per_s)} images/s, bound by {BOUND_WORDS[rate.bound]} "
            f"(per node: {rate.bound} {_rate(rate.node_images_per_s)}/s; {others})",
        )
    )
    rows.append(("fixed", f"{job.fixed_seconds:g} s per run (start-up and finish, Ray already up)"))
    hours = f"{plan.device_hours:,.2f}" if plan.device_hours >= 1 else f"{plan.device_hours:.3g}"
    rows.append((hours_word, f"{hours} for {plan.images:,} images{archive}"))
    if plan.devices_needed is not None and plan.mode == "forward":
        rows.append(
            (
                f"within {format_duration(plan.window)}",
                f"{plan.devices_needed} {word}(s) ({plan.nodes} node(s) like this one)",
            )
        )
    if plan.seconds is not None:
        on = plan.on_devices
        fits = ""
        if plan.window is not None:
            fits = ": fits the window" if plan.seconds <= plan.window else ": does NOT fit the window"
        rows.append(
            (
                f"on {on} {word}(s)",
                f"{format_duration(plan.seconds)} expected, {_rate(plan.images / plan.seconds)} images/s{fits}",
            )
        )
    width = max(len(k) for k, _ in rows) + 2
    return [f"plan for {name} on {plan.images:,} images"] + [f"  {k.ljust(width)}{v}" for k, v in rows]
