"""Images for training: decoded on CPU as uint8, augmented and normalised on the worker's device.

The data path (a Ray Data stage, or plain Python) decodes each record once per epoch into a
fixed-size uint8 array, so batches stack and travel small (uint8 is a quarter of float32):
- training: the shorter side resized to `prep.resize`, then the centre square of that side
  (`decode_for_training`): the region the random-resized crop samples from;
- evaluation: exactly the inference preprocessing, resize + centre crop to `prep.crop`
  (`decode_for_eval`).
The worker then draws the random-resized crops and flips for a whole batch at once on its device
(`augment`), from a generator seeded by (seed, stage, epoch, rank), and normalises (`normalise`).
So augmentation is reproducible, costs no CPU decode time per crop, and runs on the GPU when
there is one. Torchvision is not used (it does not run with the CPU torch build here); the
crop geometry follows its RandomResizedCrop (area scale, log-uniform aspect ratio, 10 tries,
then a centre crop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gfpipe.config import Preprocessing
from gfpipe.train.decoding import decode_for_eval, decode_for_training

__all__ = ["augment", "crop_boxes", "decode_for_eval", "decode_for_training", "iter_batches", "normalise"]


def normalise(images: Tensor, prep: Preprocessing) -> Tensor:
    """uint8 or float 0..255 images (N, 3, H, W) -> float32 normalised with prep's mean/std."""
    mean = torch.tensor(prep.mean, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - mean) / std


def crop_boxes(
    n: int,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """(n, 4) float boxes (top, left, height, width) in pixels of a size x size image: torchvision's
    RandomResizedCrop geometry, vectorised (10 tries per image, then the whole image)."""
    area = float(size * size)
    tries = 10
    s = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator) * area
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(s * aspect).round()
    h = torch.sqrt(s / aspect).round()
    ok = (w > 0) & (h > 0) & (w <= size) & (h <= size)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    boxes = torch.empty(n, 4)
    u = torch.rand(n, 2, generator=generator)
    for i in range(n):  # n is a batch: a Python loop over it costs microseconds
        j = int(first[i])
        if j < 0:
            boxes[i] = torch.tensor([0.0, 0.0, size, size])
            continue
        hi, wi = float(h[i, j]), float(w[i, j])
        top = math.floor(float(u[i, 0]) * (size - hi + 1))
        left = math.floor(float(u[i, 1]) * (size - wi + 1))
        boxes[i] = torch.tensor([top, left, hi, wi])
    return boxes


def augment(
    images: Tensor,
    out_size: int,
    generator: torch.Generator,
    *,
    random_resized_crop: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
) -> Tensor:
    """uint8 (N, 3, R, R) -> float (N, 3, out, out) in 0..255: random-resized crops (bilinear) and
    horizontal flips for the whole batch in one `grid_sample`, on the images' device.

    Without `random_resized_crop` the centre out x out window is taken (and flipped if asked).
    The generator lives on the CPU, so results do not depend on the device.
    """
    n, _, size, _ = images.shape
    if not random_resized_crop and not hflip and size == out_size:
        return images.float()  # nothing to do: skip the resampling pass
    if random_resized_crop:
        boxes = crop_boxes(n, size, scale, ratio, generator)
    else:
        offset = (size - out_size) / 2
        boxes = torch.tensor([[offset, offset, out_size, out_size]]).repeat(n, 1)
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    # Affine map from the output grid ([-1, 1]^2) to the crop box in input coordinates
    # (align_corners=False: pixel centres at (k + 0.5) / size * 2 - 1).
    top, left, h, w = boxes.unbind(1)
    cx = (left + w / 2) / size * 2 - 1
    cy = (top + h / 2) / size * 2 - 1
    sx = w / size * torch.where(flip, -1.0, 1.0)
    sy = h / size
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def iter_batches(
    records: Iterable[Any],
    prep: Preprocessing,
    batch_size: int,
    training: bool,
    label_of: Callable[[Any], int],
) -> Iterator[tuple[Tensor, Tensor]]:
    """Plain-Python batches for one process (tests, benchmarks, the single-process baseline):
    raw records (`gfpipe.data.RawRecord`) -> (uint8 images, int64 labels), decoded for training or
    evaluation; records that cannot be decoded or carry no label are skipped."""
    decode = decode_for_training if training else decode_for_eval
    images: list[np.ndarray] = []
    labels: list[int] = []
    for record in records:
        label = label_of(record)
        if record.error is not None or label < 0:
            continue
        image, _ = decode(record.data, prep)
        if image is None:
            continue
        images.append(image)
        labels.append(label)
        if len(images) == batch_size:
            yield torch.from_numpy(np.stack(images)), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield torch.from_numpy(np.stack(images)), torch.tensor(labels)
