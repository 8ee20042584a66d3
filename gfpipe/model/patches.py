"""Batched patch extraction with the official GFNet convention.

The action (a, b) in [0, 1]^2 maps to the patch's top-left corner
(floor(a * (S - p)), floor(b * (S - p))): a indexes rows, b columns, S is the input side, p the
patch side. The patch is the p x p window of the full-resolution input, not resized. (The
paper's text calls the action the patch centre; the released code and checkpoints use this
top-left form.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def patch_corners(action: Tensor, image_size: int, patch_size: int) -> Tensor:
    """action (N, 2) in [0, 1] -> top-left corners (N, 2) long, (row, col), inside the image."""
    corners = torch.floor(action.float() * (image_size - patch_size)).long()
    return corners.clamp_(0, image_size - patch_size)


def extract_patches(images: Tensor, corners: Tensor, patch_size: int, image_index: Tensor | None = None) -> Tensor:
    """images (M, C, H, W), corners (N, 2) -> patches (N, C, p, p), one gather, no per-image loop.

    Patch i comes from image i, or from image `image_index[i]` when given: the engine keeps
    full images in one store and gathers only the patches, never copying whole images.
    """
    n = corners.shape[0]
    offsets = torch.arange(patch_size, device=images.device)
    corners = corners.to(images.device)
    rows = corners[:, 0:1] + offsets  # (N, p)
    cols = corners[:, 1:2] + offsets  # (N, p)
    if image_index is None:
        batch = torch.arange(n, device=images.device).view(n, 1, 1)
    else:
        batch = image_index.to(images.device).view(n, 1, 1)
    # Advanced indices around a slice put the indexed dims first: (N, p, p, C).
    patches = images[batch, :, rows[:, :, None], cols[:, None, :]]
    return patches.permute(0, 3, 1, 2)  # (N, C, p, p), channels-last in memory
