"""Argument types and checks shared by the subcommands.

Argument types turn bad values into one-line argparse errors that name the flag and the value.
Checks that need more than the value itself (a device that must exist, storage options that
must be known to the filesystem, an output location that must be writable) run in the
command's `run` before any long work, and raise `ValueError`/`OSError` with the fix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from gfpipe.budget.grammar import parse_budget

# ----------------------------------------------------------------------------- argument types


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    convert.__name__ = "integer"
    return convert


def float_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high]."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    convert.__name__ = "number"
    return convert


def _budget_type(kind: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_budget(text, kind)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = f"{kind} budget"
    return convert


_BUDGET_FLAGS = {
    "mean": ("--budget", "MACS", "mean Multiply-Adds per image, suffixes K/M/G/T/P: 1.2G, 850M"),
    "total": ("--budget-total", "MACS", "Multiply-Adds for the whole dataset, divided by its number of images: 3.5P"),
    "time": (
        "--budget-time",
        "DURATION",
        "wall-clock model time for the whole job, from per-step seconds measured at start-up: 2h, 90m, 45s, 1h30m",
    ),
}


def add_budget_arguments(
    parser: argparse.ArgumentParser, required: bool = False, kinds: tuple[str, ...] = ("mean", "total", "time")
) -> None:
    """The mutually exclusive --budget / --budget-total / --budget-time (those of `kinds`); all
    store `args.budget`."""
    group = parser.add_mutually_exclusive_group(required=required)
    for kind in kinds:
        flag, metavar, help_text = _BUDGET_FLAGS[kind]
        group.add_argument(flag, dest="budget", type=_budget_type(kind), default=None, metavar=metavar, help=help_text)


# ----------------------------------------------------------------------------- checkpoints


def add_official_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """What an official GFNet-Pytorch file without metadata needs: --arch, --patch-size, --T,
    and --class-names (official files label their classes 0..K-1)."""
    parser.add_argument(
        "--class-names",
        metavar="FILE",
        help="the model's class names, one per line (official checkpoints label classes 0..K-1)",
    )
    parser.add_argument("--arch", help="official checkpoints without metadata: backbone name")
    parser.add_argument("--patch-size", type=int_at_least(1), help="official checkpoints without metadata: patch side")
    parser.add_argument("--T", type=int_at_least(1), help="official checkpoints without metadata: number of steps")


def checkpoint_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `load_checkpoint` keyword arguments those flags give (only the ones set)."""
    given = {"arch": args.arch, "patch_size": args.patch_size, "T": args.T, "class_names": args.class_names}
    return {k: v for k, v in given.items() if v is not None}


# ----------------------------------------------------------------------------- storage


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """`--endpoint-url` and `--storage-options`, for every command that touches storage."""
    parser.add_argument(
        "--endpoint-url",
        default=None,
        metavar="URL",
        help="S3-compatible endpoint, e.g. http://minio:9000 (default: AWS_ENDPOINT_URL or AWS)",
    )
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help='fsspec storage options as a JSON object, e.g. \'{"anon": true}\' or \'{"key": "...", "secret": "..."}\'',
    )


def storage_options_from_args(args: argparse.Namespace, *uris: str) -> dict[str, Any] | None:
    """The storage options the flags give, checked against the filesystems of `uris`."""

    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--storage-options is not valid JSON ({exc}); give an object such as '{{\"anon\": true}}'"
        ) from None
    if not isinstance(options, dict):
        raise ValueError(
            f"--storage-options must be a JSON object such as '{{\"anon\": true}}', got {args.storage_options}"
        )
    if args.endpoint_url:
        options["endpoint_url"] = args.endpoint_url
    _check_options_apply(options, [u for u in uris if u])
    return options or None


def _check_options_apply(options: dict[str, Any], uris: list[str]) -> None:
    """Each option must mean something to the storage of at least one location: one set of
    options serves every URI of a command, so a key is wrong only when no location takes it."""
    from fsspec.core import split_protocol

    from gfpipe.data.io import check_storage_options

    if not options:
        return
    remote = [u for u in uris if split_protocol(u)[0] not in (None, "file", "local")]
    if not remote:
        raise ValueError(
            f"--storage-options/--endpoint-url ({', '.join(sorted(options))}) are for object storage "
            f"such as s3://, but every location here is local ({', '.join(uris)}); drop them"
        )
    for key, value in options.items():
        errors = []
        for uri in remote:
            try:
                check_storage_options(uri, {key: value}, flag="--storage-options")
                break
            except ValueError as exc:
                errors.append(exc)
        else:
            raise errors[0]


# ----------------------------------------------------------------------------- device


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device to run the model on: cpu, cuda or cuda:N",
    )


def resolve_device(text: str) -> Any:
    """A torch device that exists here, or a ValueError that says which ones do."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device {text!r} is not supported; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = (
            "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        )
        raise ValueError(f"--device {text!r}: this torch ({torch.__version__}) is {build}; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {text!r}: only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return device


# ----------------------------------------------------------------------------- output


class Console:
    """Prints results to stdout and survives a reader that goes away (`gfpipe ... | head`).

    After a broken pipe the rest of the output is dropped, but the command finishes its work
    (and its files) and exits 0: a closed pipe is the reader's choice, not a failure.
    """

    def __init__(self) -> None:
        self.closed = False

    def print(self, text: str = "") -> None:
        if self.closed:
            return
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is quiet too


console = Console()
