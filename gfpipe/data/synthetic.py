"""Cluttered glyphs: a benchmark dataset with exactly the structure GFNet exploits.

Each image holds one target glyph (a digit by default, drawn with Pillow's built-in scalable
font) at a random place on a noisy canvas with clutter made of glyph fragments. Large targets
can be read in a downsampled glance (224 -> 96); small ones only in a full-resolution patch
around the target, so a static model on the glance fails on them and a model that looks at the
right patch succeeds (bench/synth_structure.py measures this). We cannot download ImageNet here;
this task keeps the glance/focus trade-off real and measurable.

Image `i` of split `s` with seed `k` depends only on (k, s, i) and the knobs: it is the same
however the split is generated or sharded. `gfpipe synth` writes WebDataset and/or Parquet
shards plus a class-name file, locally or to any fsspec URI (`write_dataset`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import posixpath
import re
import tarfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gfpipe.config import Preprocessing
from gfpipe.data.io import (
    StorageError,
    dumps_json,
    ensure_writable,
    filesystem,
    join_uri,
    open_file,
    read_bytes,
    storage_error,
    to_uri,
    write_bytes,
    write_json,
)
from gfpipe.data.labels import CLASSES_FILE, parse_class_names

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMATS = ("wds", "parquet")
MAX_IMAGE_SIZE = 4096
"""Largest canvas side: one 4096 px float32 canvas is 200 MB; larger is a typo, not a benchmark."""
MANIFEST = "_manifest.json"
GENERATOR = "gfpipe cluttered glyphs"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_GENERATOR_VERSION = 1
_TARGET_MARGIN = 2  # px kept free around the target so clutter never touches it
TARGET_CONTRAST = (70.0, 150.0)
"""Grey levels between the target's ink and the background level."""


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """The generator's knobs; sizes are fractions of `image_size` so the task scales with it.

    small_share: share of images whose target is small (readable only at full resolution).
    clutter: fragment density; 1.0 gives about 20 fragments on a canvas, 0 gives none.
    shift: in [-1, 1]; > 0 moves the easy/hard mix towards small targets (1: all small),
    < 0 towards large ones (-1: all large). The same image index keeps its other draws, so
    only its target size changes.
    large_font / small_font: font size ranges (glyph height is about 0.73 x font size).
    clutter_contrast: how far the fragments' ink lies from the background, in grey levels (the
    target's is always TARGET_CONTRAST, 70..150). Equal ranges (the default) make a small target
    look like a fragment in a downsampled glance, so the glance cannot say where it is; a lower
    range (e.g. 25..60) makes the target the most salient blob, as objects are in natural
    images, while reading it still needs full resolution.
    """

    image_size: int = 224
    classes: str = "0123456789"
    small_share: float = 0.5
    clutter: float = 1.0
    shift: float = 0.0
    seed: int = 0
    large_font: tuple[float, float] = (0.25, 0.42)
    small_font: tuple[float, float] = (0.062, 0.08)
    fragment_font: tuple[float, float] = (0.06, 0.13)
    clutter_contrast: tuple[float, float] = (70.0, 150.0)
    image_format: str = "jpg"
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be between 32 and {MAX_IMAGE_SIZE} pixels, got {self.image_size}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes needs >= 2 distinct characters, got {self.classes!r}")
        if not 0.0 <= self.small_share <= 1.0:
            raise ValueError(f"small_share must be in [0, 1], got {self.small_share}")
        if not -1.0 <= self.shift <= 1.0:
            raise ValueError(f"shift must be in [-1, 1], got {self.shift}")
        if self.clutter < 0:
            raise ValueError(f"clutter must be >= 0, got {self.clutter}")
        low, high = self.clutter_contrast
        if not 0.0 <= low <= high <= 255.0:
            raise ValueError(f"clutter_contrast must be LOW,HIGH with 0 <= LOW <= HIGH <= 255, got {low},{high}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be jpg or png, got {self.image_format!r}")

    @property
    def effective_small_share(self) -> float:
        """The small-target probability after `shift`."""
        if self.shift >= 0:
            return self.small_share + self.shift * (1.0 - self.small_share)
        return self.small_share * (1.0 + self.shift)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One generated image and its ground truth; bbox is (x0, y0, x1, y1), x1/y1 exclusive."""

    index: int
    split: str
    image: np.ndarray  # (H, W, 3) uint8
    label: int
    bbox: tuple[int, int, int, int]
    small: bool

    def metadata(self, config: SynthConfig) -> dict[str, Any]:
        """The JSON metadata stored next to the image in every output format."""
        x0, y0, x1, y1 = self.bbox
        return {
            "label": self.label,
            "class_name": config.classes[self.label],
            "bbox": list(self.bbox),
            "target_height": y1 - y0,
            "small": self.small,
            "split": self.split,
            "index": self.index,
            "seed": config.seed,
            "image_size": config.image_size,
        }


def synthetic_preprocessing(image_size: int = 224) -> Preprocessing:
    """Preprocessing for cluttered glyphs: images are already model size, so no resize or crop."""
    return Preprocessing(resize=image_size, crop=image_size)


SYNTH_PREPROCESSING = synthetic_preprocessing(224)


def split_id(split: str) -> int:
    """The seed-stream id of a split (train 0, val 1, test 2; other names hash stably)."""
    return _SPLIT_IDS.get(split, zlib.crc32(split.encode()) + len(_SPLIT_IDS))


def generate_sample(index: int, split: str = "train", config: SynthConfig = SynthConfig()) -> Sample:
    """Image `index` of `split`: a pure function of (config, split, index)."""
    rng = np.random.default_rng([config.seed, split_id(split), index, _GENERATOR_VERSION])
    size = config.image_size
    small = bool(rng.random() < config.effective_small_share)
    label = int(rng.integers(len(config.classes)))
    canvas, polarity = _background(rng, size)
    base = float(canvas.mean())

    font_range = config.small_font if small else config.large_font
    font_px = max(6, int(round(rng.uniform(*font_range) * size)))
    stroke = 0 if small else int(rng.integers(0, 3))
    angle = float(rng.uniform(-12, 12))
    mask = _rotated(_glyph_mask(config.classes[label], font_px, stroke), angle)
    h, w = mask.shape
    x0 = int(rng.integers(_TARGET_MARGIN, max(_TARGET_MARGIN + 1, size - w - _TARGET_MARGIN)))
    y0 = int(rng.integers(_TARGET_MARGIN, max(_TARGET_MARGIN + 1, size - h - _TARGET_MARGIN)))
    bbox = (x0, y0, x0 + w, y0 + h)
    target_colour = _ink(rng, base, polarity, TARGET_CONTRAST)

    _add_clutter(rng, canvas, config, bbox, base, polarity)
    _paint(canvas, mask, x0, y0, target_colour)
    sigma = float(rng.uniform(4.0, 14.0))
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return Sample(index=index, split=split, image=image, label=label, bbox=bbox, small=small)


def generate(count: int, split: str = "train", config: SynthConfig = SynthConfig(), start: int = 0) -> Iterator[Sample]:
    """Images start .. start + count - 1 of `split`."""
    for index in range(start, start + count):
        yield generate_sample(index, split, config)


def encode_image(image: np.ndarray, config: SynthConfig) -> bytes:
    """JPEG (quality `config.jpeg_quality`) or fast PNG bytes of an (H, W, 3) uint8 image."""
    buf = io.BytesIO()
    pil = Image.fromarray(image, "RGB")
    if config.image_format == "jpg":
        pil.save(buf, format="JPEG", quality=config.jpeg_quality)
    else:
        pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def oracle_crop(image: np.ndarray, bbox: Sequence[int], size: int = 96) -> np.ndarray:
    """The size x size full-resolution window centred on the target (shifted to stay inside)."""
    height, width = image.shape[:2]
    cx = (bbox[0] + bbox[2]) // 2
    cy = (bbox[1] + bbox[3]) // 2
    left = int(np.clip(cx - size // 2, 0, max(0, width - size)))
    top = int(np.clip(cy - size // 2, 0, max(0, height - size)))
    return image[top : top + size, left : left + size]


# --- drawing -----------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """A tinted linear gradient; polarity +1 means glyphs are lighter than the background."""
    level = float(rng.uniform(25, 230))
    polarity = 1 if level < 128 else -1
    tint = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gx, gy = rng.uniform(-18, 18, size=2).astype(np.float32)
    plane = level + gx * ramp[None, :] + gy * ramp[:, None]  # (H, W)
    canvas = plane[:, :, None] * tint[None, None, :]  # (H, W, 3)
    return np.ascontiguousarray(canvas, dtype=np.float32), polarity


def _ink(rng: np.random.Generator, base: float, polarity: int, contrast: tuple[float, float]) -> np.ndarray:
    """A glyph colour `contrast` (low, high) grey levels from the background level `base`; the same
    draws whatever the range, so changing the clutter's range changes nothing else."""
    level = np.clip(base + polarity * rng.uniform(*contrast), 0, 255)
    tint = rng.uniform(0.8, 1.2, size=3)
    return np.clip(level * tint, 0, 255).astype(np.float32)


def _add_clutter(
    rng: np.random.Generator,
    canvas: np.ndarray,
    config: SynthConfig,
    keep_free: tuple[int, int, int, int],
    base: float,
    polarity: int,
) -> None:
    """Fragments of random glyphs (crops of 35-65 % of a glyph) away from the target."""
    size = config.image_size
    count = int(rng.poisson(20.0 * config.clutter * (size / 224.0) ** 2))
    fx0, fy0, fx1, fy1 = (
        keep_free[0] - _TARGET_MARGIN,
        keep_free[1] - _TARGET_MARGIN,
        keep_free[2] + _TARGET_MARGIN,
        keep_free[3] + _TARGET_MARGIN,
    )
    for _ in range(count):
        char = config.classes[int(rng.integers(len(config.classes)))]
        font_px = max(6, int(round(rng.uniform(*config.fragment_font) * size)))
        glyph = _glyph_mask(char, font_px, 0)
        gh, gw = glyph.shape
        ch = max(2, int(gh * rng.uniform(0.35, 0.65)))
        cw = max(2, int(gw * rng.uniform(0.35, 0.65)))
        oy = int(rng.integers(0, gh - ch + 1))
        ox = int(rng.integers(0, gw - cw + 1))
        piece = glyph[oy : oy + ch, ox : ox + cw]
        x = int(rng.integers(0, size - cw + 1))
        y = int(rng.integers(0, size - ch + 1))
        colour = _ink(rng, base, polarity, config.clutter_contrast)
        if x < fx1 and x + cw > fx0 and y < fy1 and y + ch > fy0:
            continue  # would touch the target; drawn fewer, still deterministic
        _paint(canvas, piece, x, y, colour)


def _paint(canvas: np.ndarray, mask: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    """Alpha-blend `colour` through `mask` (uint8 coverage) at (x, y), clipped to the canvas."""
    h, w = mask.shape
    H, W = canvas.shape[:2]
    x1, y1 = min(W, x + w), min(H, y + h)
    if x1 <= x or y1 <= y:
        return
    alpha = (mask[: y1 - y, : x1 - x].astype(np.float32) / 255.0)[:, :, None]  # (h, w, 1)
    region = canvas[y:y1, x:x1]
    region += alpha * (colour[None, None, :] - region)


@functools.lru_cache(maxsize=4096)
def _glyph_mask(char: str, font_px: int, stroke: int) -> np.ndarray:
    """Coverage mask (uint8) of one glyph, cropped to its ink; cached (pure and small)."""
    font = _font(font_px)
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    im = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(im).text((1 - left, 1 - top), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    arr = np.asarray(im)
    mask = _crop_to_ink(arr)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=256)
def _font(font_px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=font_px)


def _rotated(mask: np.ndarray, angle: float) -> np.ndarray:
    if abs(angle) < 0.5:
        return mask
    im = Image.fromarray(mask, "L").rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    return _crop_to_ink(np.asarray(im))


def _crop_to_ink(arr: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(arr.max(axis=1) > 24)
    cols = np.flatnonzero(arr.max(axis=0) > 24)
    if rows.size == 0 or cols.size == 0:
        return np.zeros((1, 1), dtype=np.uint8)
    return np.ascontiguousarray(arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


# --- writing -----------------------------------------------------------------------------


def write_dataset(
    out: str,
    split: str,
    count: int,
    config: SynthConfig = SynthConfig(),
    *,
    formats: Sequence[str] = ("wds",),
    shard_size: int = 500,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    corrupt: int = 0,
) -> dict[str, Any]:
    """Write `count` images of `split` under `out`; returns the manifest (also written).

    `corrupt` > 0 replaces that many images, spread evenly over the split, with broken files
    (truncated, garbage, empty, an HTML error page; `corrupt_image`), for exercising error rows;
    the manifest lists their keys under `corrupt_keys`.

    Layout: OUT/classes.txt (line i = class i), OUT/SPLIT/shard-NNNNNN.tar and/or
    .parquet (images i*shard_size ..), OUT/SPLIT/_manifest.json (knobs, counts, shards). The
    manifest names shards relative to its own folder, so a copied dataset stays valid, and
    records each shard's image count and MD5 (`shard_images`, `shard_md5`: what
    `gfpipe.data.shards.count_images` trusts for a remote tar whose ETag matches).

    A split folder that holds anything (any file, not only gfpipe's) is refused unless
    `overwrite`, which removes its contents first: leftover shards from a bigger earlier run
    would otherwise be read along with the new ones. `overwrite` replaces the split only:
    OUT/classes.txt is shared by all splits, so one that lists other classes is always refused
    (the other splits' labels index it); use another OUT or remove that file yourself.
    Arguments are checked and OUT is probed for writing before anything is generated.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"format must be one or more of {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}")
    if count < 1 or shard_size < 1:
        raise ValueError(f"need count >= 1 and shard_size >= 1, got count {count} and shard_size {shard_size}")
    if not 0 <= corrupt <= count:
        raise ValueError(f"corrupt must be between 0 and count ({count}) images, got {corrupt}")
    broken = {min(count - 1, int((j + 0.5) * count / corrupt)): j for j in range(corrupt)}
    if not _SPLIT_NAME.match(split):
        raise ValueError(
            f"split {split!r} must be a plain folder name (letters, digits, '.', '_', '-', not "
            "starting with '.' or '_', which readers skip), e.g. 'test'"
        )
    split_dir = join_uri(out, split)
    ensure_writable(out, storage_options)
    _check_classes_file(out, config, storage_options)
    _clear_split(split_dir, overwrite, storage_options)

    started = time.perf_counter()
    shards: list[str] = []
    shard_images: dict[str, int] = {}
    shard_md5: dict[str, str] = {}
    small = 0
    labels = [0] * len(config.classes)
    for shard_index, first in enumerate(range(0, count, shard_size)):
        samples = list(generate(min(shard_size, count - first), split, config, start=first))
        rows = [
            (s, corrupt_image(encode_image(s.image, config), broken[s.index]) if s.index in broken else None, None)
            for s in samples
        ]
        rows = [(s, data or encode_image(s.image, config), s.metadata(config)) for s, data, _ in rows]
        small += sum(s.small for s in samples)
        for s in samples:
            labels[s.label] += 1
        name = f"shard-{shard_index:06d}"
        written = []
        if "wds" in formats:
            uri = join_uri(split_dir, name + ".tar")
            written.append((name + ".tar", _write_tar(uri, rows, config, storage_options)))
        if "parquet" in formats:
            uri = join_uri(split_dir, name + ".parquet")
            written.append((name + ".parquet", _write_parquet(uri, rows, storage_options)))
        for file_name, digest in written:
            shards.append(file_name)
            shard_images[file_name] = len(rows)
            shard_md5[file_name] = digest
        log.debug("wrote %s (%d images)", join_uri(split_dir, name), len(rows))
    write_bytes(join_uri(out, CLASSES_FILE), ("\n".join(config.classes) + "\n").encode(), storage_options)
    manifest = {
        "generator": GENERATOR,
        "generator_version": _GENERATOR_VERSION,
        "split": split,
        "count": count,
        "shard_size": shard_size,
        "formats": list(formats),
        "config": dataclasses.asdict(config),
        "small_targets": small,
        "label_counts": labels,
        "classes": list(config.classes),
        "shards": shards,
        "shard_images": shard_images,
        "shard_md5": shard_md5,
        "corrupt_keys": [f"{split}-{i:08d}" for i in sorted(broken)],
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(join_uri(split_dir, MANIFEST), manifest, storage_options)
    return manifest


def corrupt_image(data: bytes, variant: int) -> bytes:
    """A broken stand-in for an encoded image: truncated, garbage, HTML page or (variant 3) empty.

    The empty variant is one NUL byte, not zero bytes: readers may treat a zero-length member
    as absent rather than as a bad image."""
    kind = variant % 4
    if kind == 0:
        return data[: max(1, len(data) // 3)]
    if kind == 1:
        return bytes((i * 131 + 7) % 256 for i in range(257))
    if kind == 2:
        return b"<html><body>503 Service Unavailable</body></html>"
    return b"\x00"


def read_manifest(split_dir: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of a split written by `write_dataset`, with `shards` resolved to URIs in
    `split_dir`'s style (the file stores them relative to its folder); None when there is none."""
    uri = join_uri(split_dir, MANIFEST)
    try:
        manifest = json.loads(read_bytes(uri, storage_options))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(
            f"{uri}: not a readable manifest ({exc}); rewrite the split with gfpipe synth --overwrite"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    manifest["shards"] = [resolve_shard(split_dir, s) for s in manifest.get("shards", [])]
    return manifest


def resolve_shard(split_dir: str, name: str) -> str:
    """A manifest's shard entry as a URI: relative names hang from the manifest's folder (old
    manifests held absolute paths or URIs, which are kept)."""
    if "://" in name or name.startswith("/"):
        return name
    return join_uri(split_dir, name)


def _check_classes_file(out: str, config: SynthConfig, storage_options: Mapping[str, Any] | None) -> None:
    uri = join_uri(out, CLASSES_FILE)
    try:
        existing = list(parse_class_names(read_bytes(uri, storage_options).decode("utf-8-sig"), uri))
    except FileNotFoundError:
        return
    if existing != list(config.classes):
        raise ValueError(
            f"{uri} lists {_classes_text(existing)} but this split uses "
            f"{_classes_text(list(config.classes))}; the splits of one dataset share that file, so "
            "write to another --out, use the same --classes, or remove it and the other splits first"
        )


def _classes_text(names: Sequence[str]) -> str:
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"{len(names)} classes ({shown})"


def _clear_split(split_dir: str, overwrite: bool, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse a split folder that holds anything, or empty it first when `overwrite`."""
    fs, path = filesystem(split_dir, storage_options)
    path = path.rstrip("/")
    try:
        fs.invalidate_cache()
        if fs.isfile(path):
            raise StorageError(f"{split_dir} is an existing file, not a folder; move it away or choose another --out")
        found = fs.find(path) if fs.isdir(path) else []
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise storage_error(exc, split_dir, fs) from exc
    if not found:
        return
    if not overwrite:
        names = ", ".join(posixpath.relpath(f, path) for f in sorted(found)[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise FileExistsError(
            f"{split_dir} already holds {len(found)} files ({names}{more}); replace this split with --overwrite "
            "(overwrite=True in Python), or write somewhere else"
        )
    log.info("removing %d files under %s (overwrite)", len(found), split_dir)
    try:
        fs.rm(path, recursive=True)
        fs.invalidate_cache()
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise storage_error(exc, split_dir, fs) from exc
    left = fs.find(path) if fs.isdir(path) else []
    if left:
        raise StorageError(
            f"{split_dir}: {len(left)} files are still there after removing it (e.g. "
            f"{to_uri(fs, left[0], split_dir)}); remove them by hand and run again"
        )


class _Hashing:
    """A write-only file wrapper that keeps the MD5 of what went through it."""

    closed = False

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._md5 = hashlib.md5()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._md5.update(data)
        self._size += len(data)
        self._fh.write(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


def _write_tar(uri: str, rows: list, config: SynthConfig, storage_options: Mapping[str, Any] | None) -> str:
    """A WebDataset shard with KEY.jpg|png, KEY.cls, KEY.json per image; byte-identical per seed.
    Returns its MD5 (hex)."""
    ext = config.image_format
    with open_file(uri, "wb", storage_options) as fh:
        out = _Hashing(fh)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for sample, data, meta in rows:
                key = f"{sample.split}-{sample.index:08d}"
                for member, payload in (
                    (f"{key}.{ext}", data),
                    (f"{key}.cls", str(sample.label).encode()),
                    (f"{key}.json", dumps_json(meta, sort_keys=True).encode()),
                ):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    info.mode = 0o644
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(payload))
    return out.hexdigest()


def _write_parquet(uri: str, rows: list, storage_options: Mapping[str, Any] | None) -> str:
    """Columns key, image (bytes), label, json (metadata), in row groups of 64 for streaming.
    Returns its MD5 (hex)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "key": pa.array([f"{s.split}-{s.index:08d}" for s, _, _ in rows], pa.string()),
            "image": pa.array([d for _, d, _ in rows], pa.binary()),
            "label": pa.array([s.label for s, _, _ in rows], pa.int32()),
            "json": pa.array([dumps_json(m, sort_keys=True) for _, _, m in rows], pa.string()),
        }
    )
    with open_file(uri, "wb", storage_options) as fh:
        out = _Hashing(fh)
        pq.write_table(table, out, row_group_size=64, compression="none")
    return out.hexdigest()
