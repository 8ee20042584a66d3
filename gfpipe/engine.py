"""The early-exit engine: images really leave after the step that makes them confident.

The paper's code runs all T steps for every image and simulates the exits afterwards. Here an
image that is confident after step t is emitted at once and costs C_t; the others wait in a pool
for step t+1, where they are batched with hard images from other input batches, so every model
call runs at the configured batch size (except during the final flush).

Scheduling: pools[t] holds images that have done t steps (pools[0] = not yet glanced). After
each input batch, the deepest pool with a full batch runs first; so no pool grows beyond two
batches and images finish as early as possible. When the input is exhausted, pools are flushed
from shallow to deep, with at most one partial call per step; no row is held after that.

Pure torch: the Ray actor in the classify pipeline wraps this class.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from gfpipe.budget.costs import step_costs
from gfpipe.model.gfnet import GFNet, GFState
from gfpipe.model.patches import patch_corners

log = logging.getLogger(__name__)


class _ImageStore:
    """Full-resolution images of every image in flight, one slot each, on the engine's device.

    Images are copied in once; later steps gather only their patches from here, so pools move
    small per-image states around, never whole images. Capacity grows on demand and is bounded
    by what the pools can hold plus one input batch.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self.tensor: Tensor | None = None
        self.free: list[int] = []

    def put(self, images: Tensor) -> np.ndarray:
        """Copy images (n, 3, S, S) in, as the model's dtype; returns their slots."""
        n = images.shape[0]
        if self.tensor is None:
            self.tensor = torch.empty((0, *images.shape[1:]), device=self.device, dtype=self.dtype)
        if len(self.free) < n:
            self._grow(n - len(self.free))
        slots = np.array([self.free.pop() for _ in range(n)], dtype=np.int64)
        index = torch.from_numpy(slots).to(self.device)
        self.tensor.index_copy_(0, index, images.to(self.device, self.tensor.dtype, non_blocking=True))
        return slots

    def _grow(self, extra: int) -> None:
        old = self.tensor.shape[0]
        new = max(2 * old, old + extra)
        grown = self.tensor.new_empty((new, *self.tensor.shape[1:]))
        grown[:old] = self.tensor
        self.tensor = grown
        self.free.extend(range(new - 1, old - 1, -1))

    def gather(self, slots: np.ndarray) -> Tensor:
        return self.tensor.index_select(0, torch.from_numpy(slots).to(self.device))

    def release(self, slots: np.ndarray) -> None:
        self.free.extend(slots.tolist())


@dataclass
class _Chunk:
    """Images that have done the same number of steps, with everything needed to go on."""

    keys: list[Hashable]
    slots: np.ndarray  # (n,) int64: where each image lives in the image store
    state: GFState | None  # None before the glance
    shadow: np.ndarray  # (n,) bool: runs all T steps for the budget controller
    confidences: np.ndarray  # (n, steps done) max-softmax of each step so far

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, idx: np.ndarray, device: torch.device) -> "_Chunk":
        state = None if self.state is None else self.state.index(torch.from_numpy(idx).to(device))
        return _Chunk([self.keys[i] for i in idx], self.slots[idx], state, self.shadow[idx], self.confidences[idx])

    @staticmethod
    def cat(chunks: list["_Chunk"]) -> "_Chunk":
        if len(chunks) == 1:
            return chunks[0]
        return _Chunk(
            [k for c in chunks for k in c.keys],
            np.concatenate([c.slots for c in chunks]),
            None if chunks[0].state is None else GFState.cat([c.state for c in chunks]),
            np.concatenate([c.shadow for c in chunks]),
            np.concatenate([c.confidences for c in chunks]),
        )


class _Pool:
    """Images waiting for the same step, kept as chunks and concatenated only when a call runs."""

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.size = 0

    def add(self, chunk: _Chunk) -> None:
        if len(chunk):
            self.chunks.append(chunk)
            self.size += len(chunk)

    def take(self, n: int, device: torch.device) -> _Chunk:
        merged = _Chunk.cat(self.chunks)
        self.chunks, self.size = [], 0
        if len(merged) <= n:
            return merged
        self.add(merged.select(np.arange(n, len(merged)), device))
        return merged.select(np.arange(n), device)


@dataclass
class EngineStats:
    """What the engine did: every model call as (step, batch size), exits per step, MACs spent,
    and the most images that ever waited in one step's pool."""

    calls: list[tuple[int, int]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    macs: float = 0.0
    max_waiting: int = 0

    @property
    def images(self) -> int:
        return sum(self.exits)


class EarlyExitEngine:
    """Runs a GFNet with real early exits over a stream of preprocessed image batches.

    `thresholds` are eta_1..eta_T (an image exits after step t when its max softmax is >=
    eta_t; eta_T is ignored: every image exits at T). With a `controller` (a
    `gfpipe.budget.control.BudgetController`), thresholds are read from it before every step,
    its shadow images run all T steps, and every finished image is reported to it.
    """

    def __init__(
        self,
        model: GFNet,
        thresholds: Sequence[float] | np.ndarray | Tensor | None,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        top_k: int = 5,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        controller: Any = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        if autocast_dtype is not None and self.device.type != "cuda":
            raise ValueError("autocast_dtype (bf16/fp16) is for CUDA devices; leave it unset on CPU")
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.batch_size = batch_size
        self.T = model.config.T
        self.top_k = min(top_k, model.config.num_classes)
        self.costs = step_costs(model)
        self.controller = controller
        if controller is None:
            if thresholds is None:
                raise ValueError("give thresholds, or a budget controller that provides them")
            self._fixed = self._check_thresholds(thresholds)
        elif len(controller.thresholds) != self.T:
            raise ValueError(f"controller has {len(controller.thresholds)} steps, the model T={self.T}")
        self.stats = EngineStats(exits=[0] * self.T)

    def _check_thresholds(self, thresholds: Any) -> np.ndarray:
        eta = np.asarray(torch.as_tensor(thresholds, dtype=torch.float64).cpu(), dtype=np.float64)
        if eta.shape != (self.T,):
            raise ValueError(f"need {self.T} thresholds (one per step), got shape {eta.shape}")
        if np.isnan(eta).any():
            raise ValueError(f"thresholds contain NaN: {eta.tolist()}")
        return eta

    @property
    def thresholds(self) -> np.ndarray:
        """The thresholds the next step will use."""
        return self._fixed if self.controller is None else np.asarray(self.controller.thresholds)

    # ----------------------------------------------------------------------------------------

    def run(self, batches: Iterable[tuple[Sequence[Hashable], Tensor]]) -> Iterator[dict[str, Any]]:
        """Yield one result row per input image, as soon as it exits.

        `batches` yields (keys, images) with images preprocessed, (n, 3, S, S). Rows hold
        `key`, `label`, `label_name`, `confidence`, `topk_labels`, `topk_probs`, `exit_step`
        (from 1), `macs` (spent on this image) and `glimpses` ((row, col) top-left corners of the
        focus patches, in pixels of the model input).
        """
        pools = [_Pool() for _ in range(self.T)]
        store = _ImageStore(self.device, next(self.model.parameters()).dtype)
        size = self.model.config.input_size
        for keys, images in batches:
            keys = list(keys)
            if len(keys) != images.shape[0]:
                raise ValueError(f"{len(keys)} keys for {images.shape[0]} images")
            if tuple(images.shape[1:]) != (3, size, size):
                raise ValueError(f"expected images of shape (n, 3, {size}, {size}), got {tuple(images.shape)}")
            if not images.is_floating_point():
                raise ValueError(
                    f"images must be preprocessed floats (resize, crop, normalise), got {images.dtype}; "
                    "see gfpipe.data.decode.preprocess"
                )
            if not keys:
                continue
            shadow = (
                np.zeros(len(keys), bool) if self.controller is None
                else np.asarray(self.controller.shadow_mask(keys), bool)
            )
            slots = store.put(images)
            pools[0].add(_Chunk(keys, slots, None, shadow, np.zeros((len(keys), 0), np.float32)))
            while True:
                full = [t for t in range(self.T) if pools[t].size >= self.batch_size]
                if not full:
                    break
                t = full[-1]  # deepest full pool first: bounded pools, earliest exits
                yield from self._step(t, pools[t].take(self.batch_size, self.device), pools, store)
        for t in range(self.T):  # final flush, shallow to deep
            while pools[t].size:
                yield from self._step(t, pools[t].take(self.batch_size, self.device), pools, store)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def _step(self, done: int, chunk: _Chunk, pools: list[_Pool], store: _ImageStore) -> Iterator[dict[str, Any]]:
        """Run step done+1 on `chunk`; emit the images that exit, pool the rest."""
        step = done + 1
        with self._autocast():
            if chunk.state is None:
                images = store.gather(chunk.slots)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                logits, state = self.model.glance(images)
            else:
                index = torch.from_numpy(chunk.slots).to(self.device)
                logits, state = self.model.focus(store.tensor, chunk.state, image_index=index)
        self.stats.calls.append((step, len(chunk)))
        probs = logits.float().softmax(dim=-1)
        top_probs, top_labels = probs.topk(self.top_k, dim=-1)  # (n, k)
        confidence = top_probs[:, 0].cpu().numpy()
        confidences = np.concatenate([chunk.confidences, confidence[:, None]], axis=1)

        if step == self.T:
            exits = np.ones(len(chunk), bool)
        else:
            exits = (confidence >= self.thresholds[done]) & ~chunk.shadow
        exit_idx = np.flatnonzero(exits)
        if exit_idx.size:
            store.release(chunk.slots[exit_idx])
            yield from self._rows(chunk, step, exit_idx, top_probs, top_labels, state)
            if self.controller is not None:
                shadow_rows = confidences[exit_idx][chunk.shadow[exit_idx]]
                self.controller.record(np.full(exit_idx.size, step), shadow_rows if shadow_rows.size else None)
        stay_idx = np.flatnonzero(~exits)
        if stay_idx.size:
            after = _Chunk(chunk.keys, chunk.slots, state, chunk.shadow, confidences)
            pools[step].add(after.select(stay_idx, self.device))
            self.stats.max_waiting = max(self.stats.max_waiting, pools[step].size)

    def _rows(self, chunk: _Chunk, step: int, idx: np.ndarray, top_probs: Tensor, top_labels: Tensor,
              state: GFState) -> Iterator[dict[str, Any]]:
        index = torch.from_numpy(idx).to(top_probs.device)
        probs = top_probs.index_select(0, index).cpu().tolist()
        labels = top_labels.index_select(0, index).cpu().tolist()
        cfg = self.model.config
        n = idx.size
        glimpses = patch_corners(state.glimpses.index_select(0, index).reshape(-1, 2), cfg.input_size, cfg.patch_size)
        glimpses = glimpses.reshape(n, step - 1, 2).cpu().tolist()
        names = self.model.class_names
        macs = self.costs[step - 1]
        self.stats.exits[step - 1] += n
        self.stats.macs += macs * n
        for j, i in enumerate(idx):
            yield {
                "key": chunk.keys[i],
                "label": labels[j][0],
                "label_name": names[labels[j][0]],
                "confidence": probs[j][0],
                "topk_labels": labels[j],
                "topk_probs": probs[j],
                "exit_step": step,
                "macs": macs,
                "glimpses": glimpses[j],
            }


def batched(keys: Sequence[Hashable], images: Tensor, size: int) -> Iterator[tuple[list[Hashable], Tensor]]:
    """Split one keyed tensor into (keys, images) batches of `size`: input for `EarlyExitEngine.run`."""
    for start in range(0, len(keys), size):
        yield list(keys[start:start + size]), images[start:start + size]


