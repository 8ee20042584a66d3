"""Robust image decoding and the one preprocessing implementation.

Archives contain everything: CMYK and 16-bit files, palette images with transparency, phone
photos stored sideways with an EXIF orientation tag, truncated uploads, HTML error pages saved as
`.jpg`, decompression bombs. `decode` turns any byte string into an RGB uint8 array or a short
error reason and never raises, because one bad file must become one error row, not a failed
Ray block. `preprocess` is the single resize/crop/normalise used by training, evaluation and
classification, so the three can never drift apart.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gfpipe.config import Preprocessing

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
"""Images above this many pixels are refused (decompression-bomb guard), reported as errors."""

ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
"""Formats decode() accepts; others (PSD, EPS, ICO, ...) are refused to keep the attack surface small."""

DRAFT_FACTOR = 2
"""JPEG draft mode is used only when the shorter side is at least this many times the target."""

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_BACKGROUND = (255, 255, 255)
_ORIENTATION = 0x0112


def decode(
    data: bytes | None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> tuple[np.ndarray | None, str | None, tuple[int, int] | None]:
    """Decode `data` into an (H, W, 3) uint8 RGB array; never raises.

    Returns (image, None, (width, height)) or (None, short reason, size or None). The size is the
    stored size before EXIF rotation or draft reduction, for output rows. `draft_size` is the
    shorter side the caller will resize to; JPEGs much larger than that are decoded at a reduced
    scale whose shorter side stays >= draft_size.
    """
    pil, error, size = decode_pil(data, max_pixels=max_pixels, draft_size=draft_size)
    if pil is None:
        return None, error, size
    try:
        return np.array(pil), None, size
    except Exception as exc:  # noqa: BLE001 - MemoryError and friends become an error row
        return None, _reason(exc), size


def decode_pil(
    data: bytes | None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> tuple[Image.Image | None, str | None, tuple[int, int] | None]:
    """Like `decode` but returns an RGB Pillow image (saves a copy when preprocessing follows)."""
    if not data:
        return None, "empty file", None
    size: tuple[int, int] | None = None
    try:
        # Decoder warnings (corrupt EXIF, Pillow's 89 MP bomb warning that our own limit
        # replaces) are noise over millions of files: the result or the error row says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            size = im.size
            if im.format not in ALLOWED_FORMATS:
                return None, f"unsupported format {im.format}", size
            width, height = size
            if width <= 0 or height <= 0:
                return None, f"invalid dimensions {width}x{height}", size
            if max_pixels is not None and width * height > max_pixels:
                return None, _too_large(width * height, max_pixels, f"{width}x{height}"), size
            if draft_size and im.format in ("JPEG", "MPO") and min(size) >= DRAFT_FACTOR * draft_size:
                scale = draft_size / min(size)
                im.draft("RGB", (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))))
            im.load()
            if im.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
                im = ImageOps.exif_transpose(im)
            return to_rgb(im), None, size
    except Image.DecompressionBombError as exc:
        # Pillow refuses above 2 x Image.MAX_IMAGE_PIXELS before we see the size.
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(match.group(1)) if match else 0
        return None, _too_large(pixels, max_pixels or pixels, "image"), size
    except Exception as exc:  # noqa: BLE001 - every failure becomes a short reason
        return None, _reason(exc, data), size


def _too_large(pixels: int, limit: int, what: str) -> str:
    return f"too large: {what} has {pixels / 1e6:.3g} MP, limit {limit / 1e6:.3g} MP"


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: alpha composited on white, 16/32-bit and float rescaled to 0..255.

    A plain `convert("RGB")` clips I;16 and I images to white and drops alpha, which shows
    whatever colour the transparent pixels happen to hold; this does neither.
    """
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_rescale_to_uint8(np.asarray(im)), "L").convert("RGB")
    return im.convert("RGB")


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """High-bit-depth pixels to 0..255: 16-bit range for integers up to 65535, else min-max."""
    values = values.astype(np.float64, copy=False)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    if lo >= 0 and hi <= 1.0 and values.dtype.kind == "f" and hi > 0:
        scaled = values * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = values
    elif lo >= 0 and hi <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def _reason(exc: BaseException, data: bytes | None = None) -> str:
    """A short, stable reason for an error row (the full exception goes to the debug log)."""
    log.debug("decode failed: %r", exc)
    text = str(exc)
    if isinstance(exc, UnidentifiedImageError):
        head = (data or b"")[:256].lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
            return "not an image: HTML page"
        if head.startswith((b"<?xml", b"<svg")):
            return "not an image: XML/SVG text"
        return "not an image: unrecognised format"
    if "truncated" in text or isinstance(exc, EOFError):
        return "truncated image data"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    short = " ".join(text.split())[:80]
    return f"corrupt image: {type(exc).__name__}: {short}" if short else f"corrupt image: {type(exc).__name__}"


def preprocess(image: np.ndarray | Image.Image, prep: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 image -> (3, crop, crop) float32: resize shorter side, centre-crop, normalise.

    Matches torchvision's Resize(int) + CenterCrop + Normalize arithmetic (size rounding and crop
    offsets), so models trained with torchvision transforms see the same pixels.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(_as_hwc3(image), "RGB")
    if pil.mode != "RGB":
        pil = to_rgb(pil)
    pil = resize_shorter(pil, prep.resize, prep.interpolation)
    pil = centre_crop(pil, prep.crop)
    chw = np.ascontiguousarray(np.asarray(pil).transpose(2, 0, 1), dtype=np.float32)  # (3, crop, crop)
    scale, offset = _norm_constants(prep)
    chw *= scale[:, None, None]
    chw -= offset[:, None, None]
    return chw


def decode_preprocess(
    data: bytes | None, prep: Preprocessing, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray | None, str | None, tuple[int, int] | None]:
    """Decode (JPEG draft towards `prep.resize`) and preprocess; never raises.

    Returns (float32 (3, crop, crop) or None, error or None, original (width, height)).
    """
    pil, error, size = decode_pil(data, max_pixels=max_pixels, draft_size=prep.resize)
    if pil is None:
        return None, error, size
    try:
        return preprocess(pil, prep), None, size
    except Exception as exc:  # noqa: BLE001
        return None, _reason(exc), size


def decode_uint8(data: bytes | None, prep: Preprocessing) -> tuple[np.ndarray | None, str | None, tuple | None]:
    """Bytes -> (uint8 (3, crop, crop): resize + centre crop, not yet normalised; error; original
    (width, height)); never raises. Images travel this way (a quarter of float32) and are
    normalised on the model's device: training's evaluation data and the classify job."""
    pil, error, size = decode_pil(data, draft_size=prep.resize)
    if pil is None:
        return None, error, size
    try:
        square = centre_crop(resize_shorter(pil, prep.resize, prep.interpolation), prep.crop)
        return np.ascontiguousarray(np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)), None, size
    except Exception as exc:  # noqa: BLE001 - one bad image is one error
        return None, _reason(exc), size


def preprocess_batch(images: Sequence[np.ndarray | Image.Image], prep: Preprocessing) -> torch.Tensor:
    """Preprocess and stack images into one (N, 3, crop, crop) float32 tensor."""
    import torch

    if not images:
        return torch.empty((0, 3, prep.crop, prep.crop), dtype=torch.float32)
    return torch.from_numpy(np.stack([preprocess(im, prep) for im in images]))


def resize_shorter(pil: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so the shorter side is `size` (the longer side is truncated like torchvision)."""
    width, height = pil.size
    if min(width, height) == size:
        return pil
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return pil.resize(new, _FILTERS[interpolation])


def centre_crop(pil: Image.Image, crop: int) -> Image.Image:
    """The central crop x crop window (torchvision's offsets); pads with black if smaller."""
    width, height = pil.size
    if (width, height) == (crop, crop):
        return pil
    left = int(round((width - crop) / 2.0))
    top = int(round((height - crop) / 2.0))
    return pil.crop((left, top, left + crop, top + crop))


def _norm_constants(prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (mean / std).astype(np.float32)


def _as_hwc3(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"preprocess expects an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)
