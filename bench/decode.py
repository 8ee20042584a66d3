"""Decode + preprocess throughput per core vs. a bare Pillow loop, and the JPEG draft-mode gain.

Both loops read the same JPEG files from disk in one process on one core, interleaved round by
round (these machines are noisy), and the medians are compared:
  bare:   Image.open(path).convert("RGB").resize(shorter side 256)
  gfpipe: decode_preprocess(bytes, Preprocessing())  - checks, EXIF, RGB, resize 256,
          centre crop 224, normalise, CHW float32
Goal: gfpipe >= 0.8 x bare on ImageNet-size images (500 x 375). Then, on large photos
(3000 x 2000), decode_preprocess with draft mode (the default) vs. without it.

    .venv/bin/python bench/decode.py            # ~1 minute
Writes bench/results/decode.json (figures, goals, machine, command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from gfpipe.config import Preprocessing  # noqa: E402
from gfpipe.data.decode import decode_pil, decode_preprocess, preprocess, resize_shorter

PREP = Preprocessing()  # resize 256, crop 224: the ImageNet default
GOAL_RATIO = 0.8


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields plus fine texture: compresses and decodes like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    arr = np.asarray(coarse, dtype=np.float32)
    arr += rng.normal(0, 10, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_files(folder: Path, count: int, size: tuple[int, int], tag: str) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"{tag}-{i:04d}.jpg"
        photo_like(*size, seed=i).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def bare_loop(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as im:
            resize_shorter(im.convert("RGB"), PREP.resize, PREP.interpolation)


def gfpipe_loop(paths: list[Path]) -> None:
    for path in paths:
        out, error, _ = decode_preprocess(path.read_bytes(), PREP)
        assert error is None, error


def no_draft_loop(paths: list[Path]) -> None:
    for path in paths:
        pil, error, _ = decode_pil(path.read_bytes(), draft_size=None)
        assert error is None, error
        preprocess(pil, PREP)


def race(loops: dict[str, Callable[[list[Path]], None]], paths: list[Path], rounds: int) -> dict[str, float]:
    """Median images/s of each loop over interleaved rounds."""
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():
        loop(paths[:4])  # warm-up: imports, caches, page cache
    for _ in range(rounds):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop(paths)
            rates[name].append(len(paths) / (time.perf_counter() - start))
    return {name: round(statistics.median(values), 1) for name, values in rates.items()}


def draft_quality(paths: list[Path]) -> float:
    """Mean absolute difference (0..255 scale) between draft and full-decode model inputs."""
    diffs = []
    std = np.asarray(PREP.std, dtype=np.float32)[:, None, None]
    for path in paths[:8]:
        data = path.read_bytes()
        with_draft, _, _ = decode_preprocess(data, PREP)
        full = preprocess(decode_pil(data, draft_size=None)[0], PREP)
        diffs.append(float(np.abs((with_draft - full) * std).mean() * 255))
    return round(float(np.mean(diffs)), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="ImageNet-size JPEGs")
    parser.add_argument("--large", type=int, default=24, help="large JPEGs for the draft comparison")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = write_files(folder, args.count, (500, 375), "imagenet")
        large = write_files(folder, args.large, (3000, 2000), "large")
        main_rates = race({"bare_pillow": bare_loop, "gfpipe": gfpipe_loop}, small, args.rounds)
        draft_rates = race(
            {"no_draft": no_draft_loop, "draft": gfpipe_loop, "bare_pillow": bare_loop}, large, args.rounds
        )
        quality = draft_quality(large)

    ratio = round(main_rates["gfpipe"] / main_rates["bare_pillow"], 3)
    gain = round(draft_rates["draft"] / draft_rates["no_draft"], 2)
    print(
        f"500x375 JPEG, images/s on one core: bare Pillow {main_rates['bare_pillow']}, "
        f"gfpipe decode+preprocess {main_rates['gfpipe']}"
    )
    print(f"ratio gfpipe / bare = {ratio:.2f} (goal >= {GOAL_RATIO})")
    print(
        f"3000x2000 JPEG, images/s: no draft {draft_rates['no_draft']}, draft {draft_rates['draft']}, "
        f"bare Pillow {draft_rates['bare_pillow']}; draft gain {gain:.2f}x, "
        f"mean |difference| of model inputs {quality} grey levels"
    )
    report = {
        "benchmark": "decode",
        "imagenet_size": {
            "size": [500, 375],
            "files": args.count,
            "images_per_s_per_core": main_rates,
            "ratio_gfpipe_vs_bare": ratio,
        },
        "large_jpeg": {
            "size": [3000, 2000],
            "files": args.large,
            "images_per_s_per_core": draft_rates,
            "draft_gain": gain,
            "draft_vs_full_mean_abs_diff_grey_levels": quality,
        },
        "goals": {"ratio_gfpipe_vs_bare_min": GOAL_RATIO},
        "checks": {"ratio_goal_met": ratio >= GOAL_RATIO},
        "method": "one process, one core; loops interleaved per round, median of rounds; files on local disk",
        "preprocessing": {"resize": PREP.resize, "crop": PREP.crop, "interpolation": PREP.interpolation},
        "rounds": args.rounds,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
