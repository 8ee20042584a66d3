"""Bytes -> uint8 CHW arrays for training and evaluation, in numpy and Pillow only.

The training data's decode tasks (`gfpipe.train.ingest`) run in Ray worker processes of their
own: this module imports no torch, so such a process starts in a fraction of a second. (A
second decode task, e.g. validation while the next epoch's input starts, needs a new worker
process; one that imported torch took about 2 s to start on 2 cores.)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from gfpipe.config import Preprocessing
from gfpipe.data.decode import centre_crop, decode_pil, decode_uint8, resize_shorter


def decode_for_training(data: bytes | None, prep: Preprocessing) -> tuple[np.ndarray | None, str | None]:
    """Bytes -> uint8 (3, R, R), R = prep.resize: shorter side resized to R, centre square; never raises."""
    pil, error, _ = decode_pil(data, draft_size=prep.resize)
    if pil is None:
        return None, error
    square = centre_crop(resize_shorter(pil, prep.resize, prep.interpolation), prep.resize)
    return _chw(square), None


def decode_for_eval(data: bytes | None, prep: Preprocessing) -> tuple[np.ndarray | None, str | None]:
    """Bytes -> uint8 (3, S, S), S = prep.crop: the inference preprocessing before normalisation."""
    image, error, _ = decode_uint8(data, prep)
    return image, error


def _chw(pil: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(pil, dtype=np.uint8).transpose(2, 0, 1))  # (3, H, W)
