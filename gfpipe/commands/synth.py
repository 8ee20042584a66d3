"""`gfpipe synth`: write a split of the cluttered-glyphs benchmark dataset."""

from __future__ import annotations

import argparse
import logging

from gfpipe.commands.common import (
    add_storage_arguments,
    console,
    float_between,
    int_at_least,
    storage_options_from_args,
)
from gfpipe.data.synthetic import FORMATS, MAX_IMAGE_SIZE, SPLITS, SynthConfig

log = logging.getLogger(__name__)


def _formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"{text!r}: each format must be one of {', '.join(FORMATS)} (e.g. 'wds,parquet')"
        )
    return formats


def _font_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX as fractions of the image size, got {text!r}") from None
    if not 0 < low <= high < 1:
        raise argparse.ArgumentTypeError(f"need 0 < MIN <= MAX < 1 (fractions of the image size), got {text}")
    return low, high


def _contrast_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in grey levels, got {text!r}") from None
    if not 0 <= low <= high <= 255:
        raise argparse.ArgumentTypeError(f"need 0 <= LOW <= HIGH <= 255 (grey levels), got {text}")
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SynthConfig()
    parser.add_argument("--out", required=True, help="dataset folder URI (local path, file://, s3://...)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split (each has its own seed stream)")
    parser.add_argument("--count", type=int_at_least(1), default=256, help="number of images")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="dataset seed")
    parser.add_argument(
        "--format",
        type=_formats,
        default="wds",
        metavar="FORMATS",
        help="wds, parquet, or both as 'wds,parquet' (same shard names)",
    )
    parser.add_argument("--shard-size", type=int_at_least(1), default=500, help="images per shard")
    parser.add_argument(
        "--image-size", type=int_at_least(32, MAX_IMAGE_SIZE), default=defaults.image_size, help="canvas side in pixels"
    )
    parser.add_argument(
        "--small-share",
        type=float_between(0, 1),
        default=defaults.small_share,
        help="share of images whose target is small (readable only at full resolution)",
    )
    parser.add_argument(
        "--clutter",
        type=float_between(0, 10),
        default=defaults.clutter,
        help="clutter density (0 = none, 1 = about 20 fragments at 224 px)",
    )
    parser.add_argument(
        "--clutter-contrast",
        type=_contrast_range,
        default=",".join(f"{v:g}" for v in defaults.clutter_contrast),
        metavar="LOW,HIGH",
        help="grey levels between the fragments' ink and the background (the target's: 70..150); "
        "lower makes the target stand out in the glance",
    )
    parser.add_argument(
        "--shift",
        type=float_between(-1, 1),
        default=defaults.shift,
        help="moves the mix towards small targets (> 0) or large ones (< 0)",
    )
    parser.add_argument(
        "--small-font",
        type=_font_range,
        default=",".join(f"{v:g}" for v in defaults.small_font),
        metavar="MIN,MAX",
        help="font size range of small targets, as fractions of the image size",
    )
    parser.add_argument(
        "--large-font",
        type=_font_range,
        default=",".join(f"{v:g}" for v in defaults.large_font),
        metavar="MIN,MAX",
        help="font size range of large targets, as fractions of the image size",
    )
    parser.add_argument(
        "--corrupt",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="replace N images with broken files (truncated, garbage, empty, HTML) to exercise error rows",
    )
    parser.add_argument("--classes", default=defaults.classes, help="one character per class")
    parser.add_argument(
        "--image-format", default=defaults.image_format, choices=("jpg", "png"), help="how images are encoded"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing split folder (its old files are removed first)"
    )
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gfpipe.data.io import join_uri
    from gfpipe.data.synthetic import write_dataset

    options = storage_options_from_args(args, args.out)
    config = SynthConfig(
        image_size=args.image_size,
        classes=args.classes,
        small_share=args.small_share,
        clutter=args.clutter,
        shift=args.shift,
        seed=args.seed,
        image_format=args.image_format,
        small_font=args.small_font,
        large_font=args.large_font,
        clutter_contrast=args.clutter_contrast,
    )
    manifest = write_dataset(
        args.out,
        args.split,
        args.count,
        config,
        formats=args.format,
        shard_size=args.shard_size,
        storage_options=options,
        overwrite=args.overwrite,
        corrupt=args.corrupt,
    )
    console.print(
        f"wrote {manifest['count']} {args.split} images ({manifest['small_targets']} small targets) "
        f"in {len(manifest['shards'])} files under {join_uri(args.out, args.split)} "
        f"in {manifest['seconds']:.1f} s" + (f", {args.corrupt} of them broken on purpose" if args.corrupt else "")
    )
    return 0
