"""Robust decoding (modes, EXIF, bombs, draft, a corrupt-input corpus) and preprocessing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gfpipe.config import Preprocessing
from gfpipe.data.decode import (
    DEFAULT_MAX_PIXELS,
    decode,
    decode_preprocess,
    preprocess,
    preprocess_batch,
    to_rgb,
)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise_image(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + _png_chunk(b"IEND", b"")
    )


def corrupt_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected start of the error reason)."""
    rng = np.random.default_rng(1)
    jpg = encode(noise_image((256, 192)), "JPEG")
    png = encode(noise_image((128, 96)), "PNG")
    gif = encode(noise_image((64, 64)), "GIF")
    webp = encode(noise_image((128, 96)), "WEBP")
    bmp = encode(noise_image((64, 64)), "BMP")
    broken_png = bytearray(png)
    idat = png.index(b"IDAT")
    broken_png[idat + 8 : idat + 200] = rng.integers(0, 256, 192, dtype=np.uint8).tobytes()
    return {
        "zero bytes": (b"", "empty file"),
        "random bytes": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image"),
        "html page named .jpg": (
            b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
            "not an image: HTML",
        ),
        "plain text": (b"hello, not an image\n" * 20, "not an image"),
        "svg text": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "not an image: XML"),
        "truncated jpeg": (jpg[: len(jpg) // 2], "truncated"),
        "jpeg marker only": (jpg[:3], "not an image"),
        # Garbage without 0xFF bytes holds no JPEG markers, so libjpeg runs off the end.
        "jpeg header + garbage": (
            jpg[:700] + rng.integers(0, 255, 3000, dtype=np.uint8).tobytes(),
            "truncated",
        ),
        "truncated png": (png[: len(png) // 2], "truncated"),
        "png header + garbage data": (bytes(broken_png), "corrupt image"),
        "absurd dimensions": (png_claiming(200_000, 200_000), "too large"),
        "zero width": (png_claiming(0, 10), "not an image"),
        "truncated gif": (gif[: len(gif) // 3], "truncated"),
        "truncated webp": (webp[: len(webp) // 2], "corrupt image"),
        "truncated bmp": (bmp[: len(bmp) // 2], "truncated"),
        "tiff header + garbage": (
            b"II*\x00" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
            "not an image",
        ),
        "unsupported format (ico)": (encode(noise_image((32, 32)), "ICO"), "unsupported format ICO"),
    }


CORPUS = corrupt_corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corrupt_input_gives_short_error_never_raises(name):
    data, expected = CORPUS[name]
    image, error, _ = decode(data)
    assert image is None
    assert error is not None and error.startswith(expected), error
    assert len(error) <= 120


def test_corpus_has_at_least_twelve_cases():
    assert len(CORPUS) >= 12


def test_none_is_an_error_not_an_exception():
    assert decode(None)[:2] == (None, "empty file")


def test_decode_reports_original_size_and_rgb():
    image, error, size = decode(encode(noise_image((64, 48)), "PNG"))
    assert error is None and size == (64, 48)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    image[0, 0, 0] = 1  # writable


def test_bomb_limit_is_configurable_and_an_error_row():
    data = encode(noise_image((100, 100)), "PNG")
    assert decode(data, max_pixels=10_001)[1] is None
    image, error, size = decode(data, max_pixels=9_999)
    assert image is None and size == (100, 100)
    assert error.startswith("too large: 100x100") and "limit" in error
    assert DEFAULT_MAX_PIXELS == 100_000_000
    assert decode(data, max_pixels=None)[1] is None


def _mode_image(mode: str) -> Image.Image:
    size = (8, 4)
    if mode == "1":
        return Image.new("1", size, 1)
    if mode == "L":
        return Image.new("L", size, 100)
    if mode == "LA":
        return Image.new("LA", size, (50, 255))
    if mode == "P":
        im = Image.new("P", size, 0)
        im.putpalette([10, 20, 30] + [0, 0, 0] * 255)
        return im
    if mode == "PA":
        im = Image.new("PA", size, (0, 0))
        im.putpalette([10, 20, 30] + [0, 0, 0] * 255)
        return im
    if mode == "RGBA":
        return Image.new("RGBA", size, (200, 0, 0, 0))
    if mode == "CMYK":
        return Image.new("CMYK", size, (0, 0, 0, 0))
    if mode == "I;16":
        return Image.new("I;16", size, 65535)
    if mode == "I":
        return Image.new("I", size, 1000)
    if mode == "F":
        return Image.new("F", size, 0.5)
    raise AssertionError(mode)


# mode -> (file format to store it in, or None for an in-memory check; expected RGB pixel)
MODES = {
    "1": ("PNG", (255, 255, 255)),
    "L": ("PNG", (100, 100, 100)),
    "LA": ("PNG", (50, 50, 50)),
    "P": ("PNG", (10, 20, 30)),
    "PA": (None, (255, 255, 255)),  # fully transparent -> white background
    "RGBA": ("PNG", (255, 255, 255)),  # transparent red must not show as red
    "CMYK": ("JPEG", (255, 255, 255)),
    "I;16": ("PNG", (255, 255, 255)),  # full 16-bit white, not clipped garbage
    "I": ("TIFF", (4, 4, 4)),  # 1000 on a 16-bit scale
    "F": ("TIFF", (128, 128, 128)),  # 0.5 on a 0..1 scale
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_becomes_rgb(mode):
    fmt, expected = MODES[mode]
    im = _mode_image(mode)
    if fmt is None:
        rgb = np.asarray(to_rgb(im))
    else:
        rgb, error, _ = decode(encode(im, fmt))
        assert error is None
    assert rgb.shape == (4, 8, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[0, 0].astype(int) - expected).max() <= 2, rgb[0, 0]


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    image, error, size = decode(encode(im, "JPEG", exif=exif, quality=95))
    assert error is None and size == (40, 20)
    assert image.shape == (40, 20, 3)  # portrait after orientation
    assert image[5, 10, 0] > 200 and image[35, 10, 2] > 200  # red on top, blue below


def test_jpeg_draft_reduces_but_keeps_shorter_side_at_least_target():
    data = encode(noise_image((2000, 1500)), "JPEG", quality=80)
    full, _, size = decode(data)
    small, error, size2 = decode(data, draft_size=224)
    assert error is None and size == size2 == (2000, 1500)
    assert full.shape == (1500, 2000, 3)
    assert min(small.shape[:2]) >= 224 and small.shape[0] < 1500
    # no draft when the image is not much larger than the target
    near, _, _ = decode(encode(noise_image((400, 300)), "JPEG"), draft_size=224)
    assert near.shape == (300, 400, 3)


def test_preprocess_matches_manual_resize_crop_normalise():
    prep = Preprocessing(resize=64, crop=32, interpolation="bilinear")
    image = np.asarray(noise_image((100, 50), seed=3))
    out = preprocess(image, prep)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    resized = Image.fromarray(image).resize((128, 64), Image.Resampling.BILINEAR)
    crop = np.asarray(resized.crop((48, 16, 80, 48)), dtype=np.float32) / 255.0
    expected = ((crop - np.array(prep.mean)) / np.array(prep.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_preprocess_constant_image_value():
    prep = Preprocessing(resize=16, crop=16)
    out = preprocess(np.full((16, 16, 3), 255, dtype=np.uint8), prep)
    expected = (1.0 - np.array(prep.mean)) / np.array(prep.std)
    np.testing.assert_allclose(out[:, 5, 5], expected, rtol=1e-6)


def test_preprocess_rejects_wrong_arrays():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), dtype=np.float32), Preprocessing(resize=8, crop=8))


def test_preprocess_batch_stacks_into_tensor():
    prep = Preprocessing(resize=24, crop=16)
    images = [np.asarray(noise_image((40, 30), seed=s)) for s in range(3)]
    batch = preprocess_batch(images, prep)
    assert isinstance(batch, torch.Tensor) and batch.shape == (3, 3, 16, 16) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[1], torch.from_numpy(preprocess(images[1], prep)))
    assert preprocess_batch([], prep).shape == (0, 3, 16, 16)


def test_decode_preprocess_equals_two_steps_and_reports_errors():
    prep = Preprocessing(resize=32, crop=24)
    data = encode(noise_image((48, 40)), "PNG")
    out, error, size = decode_preprocess(data, prep)
    assert error is None and size == (48, 40)
    np.testing.assert_allclose(out, preprocess(decode(data)[0], prep))
    assert decode_preprocess(b"junk", prep)[:2] == (None, "not an image: unrecognised format")
