"""`gfpipe costs`: per-step cumulative Multiply-Adds of a checkpoint or an architecture."""

from __future__ import annotations

import argparse

from gfpipe.commands.common import add_storage_arguments, console, int_at_least

# Architecture flags: defaults apply to --arch only; with --checkpoint they must agree with it.
_ARCH_FLAGS = {"patch_size": 96, "T": 5, "input_size": 224, "num_classes": 1000}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="gfpipe or official GFNet checkpoint (path or URI)")
    src.add_argument("--arch", help="backbone name, e.g. resnet50, mobilenetv3_large_100, tiny")
    parser.add_argument(
        "--patch-size",
        type=int_at_least(1),
        default=None,
        help=f"patch side in pixels (with --arch; default {_ARCH_FLAGS['patch_size']})",
    )
    parser.add_argument(
        "--T", type=int_at_least(1), default=None, help=f"number of steps (with --arch; default {_ARCH_FLAGS['T']})"
    )
    parser.add_argument(
        "--input-size",
        type=int_at_least(1),
        default=None,
        help=f"model input side in pixels (with --arch; default {_ARCH_FLAGS['input_size']})",
    )
    parser.add_argument(
        "--num-classes",
        type=int_at_least(1),
        default=None,
        help=f"classes (with --arch; default {_ARCH_FLAGS['num_classes']})",
    )
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gfpipe.budget.costs import format_macs, part_costs
    from gfpipe.commands.common import storage_options_from_args
    from gfpipe.model import GFNetConfig

    given = {k: getattr(args, k) for k in _ARCH_FLAGS if getattr(args, k) is not None}
    if args.checkpoint:
        from gfpipe.checkpoint import load_checkpoint

        options = storage_options_from_args(args, args.checkpoint)
        config = load_checkpoint(args.checkpoint, storage_options=options).config
        conflicts = [
            f"--{k.replace('_', '-')} {v} (the checkpoint has {getattr(config, k)})"
            for k, v in given.items()
            if getattr(config, k) != v
        ]
        if conflicts:
            raise ValueError(
                f"{args.checkpoint} describes its own architecture; these flags disagree with it: "
                f"{', '.join(conflicts)}. Drop them, or use --arch to cost another architecture"
            )
    else:
        config = GFNetConfig(backbone=args.arch, **{**_ARCH_FLAGS, **given}).resolved()
    parts = part_costs(config)
    console.print(f"{config.backbone}  input {config.input_size}  patch {config.patch_size}  T {config.T}")
    console.print(
        f"  glance encoder {format_macs(parts.glance_encoder)}  local encoder "
        f"{format_macs(parts.local_encoder)}  policy {format_macs(parts.policy)}"
    )
    for t, c in enumerate(parts.cumulative(), 1):
        console.print(f"  exit after step {t}: {format_macs(c)} MACs")
    return 0
