"""`--calibrate N`: first thresholds from the archive itself, without labels.

The solver needs only exit scores, so a sample of tonight's own images calibrates better than a
checkpoint's held-out set when the archive looks different. The sample is spread over the shards
(the first images of up to N shards, a few from each), every image runs all T steps, and that
cost (N x C_T) counts against the budget. Images that cannot be decoded are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gfpipe.budget.scores import exit_scores
from gfpipe.data.decode import decode_uint8
from gfpipe.data.shards import ReadOptions, Shard, iter_shard_records
from gfpipe.model.gfnet import GFNet


def sample_images(
    shards: Sequence[Shard], count: int, prep: Any, storage_options: Mapping[str, Any] | None, read_options: ReadOptions
) -> np.ndarray:
    """Up to `count` decoded uint8 (3, S, S) images, ceil(count / k) from each of k shards."""
    chosen = list(shards)[: max(1, count)]
    per_shard = math.ceil(count / max(1, len(chosen)))
    images: list[np.ndarray] = []
    for shard in chosen:
        taken = 0
        for record in iter_shard_records(shard, storage_options, read_options):
            if record.error is None:
                image, _, _ = decode_uint8(record.data, prep)
                if image is not None:
                    images.append(image)
                    taken += 1
            if taken >= per_shard or len(images) >= count:
                break
        if len(images) >= count:
            break
    return np.stack(images) if images else np.zeros((0, 3, prep.crop, prep.crop), np.uint8)


@torch.inference_mode()
def archive_scores(model: GFNet, images: np.ndarray, batch_size: int, device: torch.device | str) -> np.ndarray:
    """Exit scores (n, T) of every step for uint8 images (n, 3, S, S)."""
    device = torch.device(device)
    model = model.to(device).eval()
    prep = model.card.preprocessing
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device).float()
        logits = model.anytime((x - mean) / std)  # (T, n, K)
        out.append(exit_scores(logits.float()).T.cpu().numpy())  # (n, T)
    return np.concatenate(out) if out else np.zeros((0, model.config.T), np.float32)


def calibrate_on_archive(
    checkpoint: str,
    overrides: Mapping[str, Any],
    shards: Sequence[Shard],
    count: int,
    batch_size: int,
    device: str,
    storage_options: Mapping[str, Any] | None,
    read_options: ReadOptions,
) -> np.ndarray:
    """Load the model where this runs (a Ray task on a replica's resources) and score a sample."""
    from gfpipe.checkpoint import load_checkpoint

    torch_device = torch.device("cuda:0" if device == "cuda" else "cpu")
    model = load_checkpoint(checkpoint, device=torch_device, storage_options=storage_options, **dict(overrides))
    images = sample_images(shards, count, model.card.preprocessing, storage_options, read_options)
    return archive_scores(model, images, batch_size, torch_device)
