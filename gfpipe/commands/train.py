"""`gfpipe train`: train a GFNet on a Ray cluster (all three stages, calibration, one checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gfpipe.commands.common import add_storage_arguments, console, int_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="YAML|NAME",
        help="training config: a YAML file of overrides of the defaults, or the name of one in configs/ "
        "(resnet50, densenet121, regnety_600m, mobilenetv3, mobilenetv3_large_125, efficientnet_b2, demo, ...)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (YAML syntax), e.g. --set stage1.epochs=3; repeatable",
    )
    parser.add_argument("--train", metavar="URI", help="labelled training images (sets data.train)")
    parser.add_argument("--val", metavar="URI", help="labelled validation images (sets data.val)")
    parser.add_argument(
        "--calibration", metavar="URI", help="held-out images for the calibration pass (default: --val)"
    )
    parser.add_argument("--out", metavar="URI", help="final checkpoint (default: STORAGE/NAME/model.pt)")
    parser.add_argument("--name", help="run name: re-running with the same name and storage resumes the run")
    parser.add_argument("--storage", metavar="URI", help="run storage for checkpoints: a folder or s3://bucket/prefix")
    parser.add_argument(
        "--workers", type=int_at_least(1), metavar="N", help="Ray Train workers (sets scaling.num_workers)"
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (sets scaling.use_gpu)")
    parser.add_argument(
        "--restart", action="store_true", help="start the run over, discarding its checkpoints (even if finished)"
    )
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gfpipe.commands.common import storage_options_from_args
    from gfpipe.train.config import load_config
    from gfpipe.train.run import init_ray, prepare_run, train

    # Everything that can be wrong is checked before Ray starts.
    config = _with_flags(load_config(args.config, args.sets), args).check()
    options = storage_options_from_args(
        args,
        config.data.train,
        config.data.val,
        config.data.calibration or "",
        config.run.storage,
        config.run.output or "",
    )
    plan = prepare_run(config, options, restart=args.restart)
    if plan.state == "finished" and not args.restart:
        console.print(f"run {plan.name} has already finished: {plan.output} (--restart trains it again)")
        return 0
    init_ray()
    console.print(f"wrote {train(plan, restart=args.restart)}")
    return 0


def _with_flags(config: Any, args: argparse.Namespace) -> Any:
    data = {k: v for k, v in (("train", args.train), ("val", args.val), ("calibration", args.calibration)) if v}
    run = {k: v for k, v in (("output", args.out), ("name", args.name), ("storage", args.storage)) if v}
    scaling: dict[str, Any] = {}
    if args.workers is not None:
        scaling["num_workers"] = args.workers
    if args.gpu:
        scaling["use_gpu"] = True
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, **data),
        run=dataclasses.replace(config.run, **run),
        scaling=dataclasses.replace(config.scaling, **scaling),
    )
