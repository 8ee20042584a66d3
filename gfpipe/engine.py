"""The early-exit engine: images really leave after the step that makes them confident.

The paper's code runs all T steps for every image and simulates the exits afterwards. Here an
image that is confident after step t is emitted at once and costs C_t; the others wait in a pool
for step t+1, where they are batched with hard images from other input batches, so every model
call runs at the configured batch size (except during the final flush).

Scheduling: pools[t] holds images that have done t steps (pools[0] = not yet glanced). After
each input batch, the deepest pool with a full batch runs first; so no pool grows beyond two
batches and images finish as early as possible. When the input is exhausted, pools are flushed
from shallow to deep, with at most one partial call per step; no row is held after that.

With a budget controller, thresholds move while images wait in the pools: before an image pays
for its next step, it is checked again against the current threshold of the step it has done,
and leaves there if it now clears it (`EngineStats.late_exits`). This keeps the controller's
hold on spend tight when many images are in flight (a call holds several batches).

Images are ranked by the exit score (`gfpipe.budget.scores`: log-odds of the top class, which
never saturates), and thresholds are in score units. An image whose pixels are not finite, or
whose logits stop being finite at some step, leaves at once as an error row that costs what it
cost; it never reaches the budget controller's sample.

Exits match `GFNet.anytime` + `gfpipe.budget.solver.simulate` exactly when the model's numerics
do not depend on batch composition (one thread, deterministic kernels). Otherwise (many-threaded
CPU kernels, GPU algorithms chosen by batch size) a score can move by about 1e-5 between
batches, so an image whose score lies within that of a threshold may exit one step earlier or
later than the simulation says (`tests/test_engine.py` bounds this).

Pure torch: the Ray actor in the classify pipeline wraps this class.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gfpipe.budget.costs import step_costs
from gfpipe.budget.scores import exit_scores
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
    scores: np.ndarray  # (n, steps done) exit score of each step so far
    top: tuple[Tensor, Tensor] | None = None  # top-k (probs, labels) (n, k) of the last step

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, idx: np.ndarray, device: torch.device) -> _Chunk:
        index = torch.from_numpy(idx).to(device)
        state = None if self.state is None else self.state.index(index)
        top = None if self.top is None else (self.top[0].index_select(0, index), self.top[1].index_select(0, index))
        return _Chunk([self.keys[i] for i in idx], self.slots[idx], state, self.shadow[idx], self.scores[idx], top)

    @staticmethod
    def cat(chunks: list[_Chunk]) -> _Chunk:
        if len(chunks) == 1:
            return chunks[0]
        return _Chunk(
            [k for c in chunks for k in c.keys],
            np.concatenate([c.slots for c in chunks]),
            None if chunks[0].state is None else GFState.cat([c.state for c in chunks]),
            np.concatenate([c.shadow for c in chunks]),
            np.concatenate([c.scores for c in chunks]),
            None if chunks[0].top is None else tuple(torch.cat([c.top[i] for c in chunks]) for i in (0, 1)),
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
    """What the engine did: every model call as (step, batch size), rows per exit step, error
    rows, MACs spent, and the most images that ever waited in one step's pool.

    `exits[t-1]` counts rows that left after step t, error rows included (a model output that
    stopped being finite at step t counts there); `refused` counts images refused before the
    glance (non-finite pixels), which cost nothing.
    """

    calls: list[tuple[int, int]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    errors: int = 0
    refused: int = 0
    macs: float = 0.0
    max_waiting: int = 0
    late_exits: int = 0  # images that left a pool without another step (thresholds moved)

    @property
    def images(self) -> int:
        """Rows produced: one per input image."""
        return sum(self.exits) + self.refused


class EarlyExitEngine:
    """Runs a GFNet with real early exits over a stream of preprocessed image batches.

    `thresholds` are eta_1..eta_T in exit-score units (`gfpipe.budget.scores`): an image exits
    after step t when its exit score is >= eta_t; eta_T is ignored (every image exits at T).
    With a `controller` (a `gfpipe.budget.control.BudgetController`), thresholds are read from
    it before every step, its shadow images run all T steps, and every finished image is
    reported to it.
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
        step_macs: Sequence[float] | None = None,
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
        # Counting the costs is a model trace on the meta device, about 0.8 s the first time in a
        # process: a caller that already knows them (the classify job's driver) passes them.
        self.costs = list(step_costs(model) if step_macs is None else step_macs)
        if len(self.costs) != self.T:
            raise ValueError(f"step_macs has {len(self.costs)} entries, the model T={self.T}")
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

        `batches` yields (keys, images) with images preprocessed, a float tensor (n, 3, S, S);
        keys must be unique within one run. Rows hold `key`, `label`, `label_name`,
        `confidence` (max-softmax), `topk_labels`, `topk_probs`, `exit_step` (from 1),
        `macs` (spent on this image), `glimpses` ((row, col) top-left corners of the focus
        patches, in pixels of the model input) and `error` (None, or why the image failed:
        then the prediction fields are None).
        """
        pools = [_Pool() for _ in range(self.T)]
        store = _ImageStore(self.device, next(self.model.parameters()).dtype)
        seen: set[Hashable] = set()
        for keys, images in batches:
            keys = self._check_batch(keys, images, seen)
            if not keys:
                continue
            finite = _finite_images(images)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                yield from self._refused_rows([keys[i] for i in bad])
                good = np.flatnonzero(finite)
                keys, images = [keys[i] for i in good], images[torch.from_numpy(good).to(images.device)]
                if not keys:
                    continue
            slots = store.put(images)
            shadow = (
                np.zeros(len(keys), bool)
                if self.controller is None
                else np.asarray(self.controller.admit(keys), bool)  # counts them in flight, too
            )
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

    def _check_batch(self, keys: Sequence[Hashable], images: Any, seen: set[Hashable]) -> list[Hashable]:
        """The batch's keys as a list, after checking the batch is something the model can take."""
        if not isinstance(images, Tensor):
            raise TypeError(
                f"images must be a torch.Tensor (n, 3, S, S), got {type(images).__module__}."
                f"{type(images).__name__}; convert with torch.from_numpy (see gfpipe.data.decode.preprocess_batch)"
            )
        keys = list(keys)
        size = self.model.config.input_size
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} keys for {images.shape[0]} images")
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images of shape (n, 3, {size}, {size}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be preprocessed floats (resize, crop, normalise), got {images.dtype}; "
                "see gfpipe.data.decode.preprocess"
            )
        fresh = set(keys)
        if len(fresh) != len(keys) or not seen.isdisjoint(fresh):
            repeated = {k for k, c in collections.Counter(keys).items() if c > 1} | (fresh & seen)
            shown = ", ".join(sorted(repr(k) for k in repeated)[:3])
            raise ValueError(
                f"key(s) {shown} appear more than once in one run; keys name output rows and must be unique"
            )
        seen |= fresh
        return keys

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _late_exits(self, done: int, chunk: _Chunk, store: _ImageStore) -> tuple[list[dict[str, Any]], _Chunk]:
        """Images that waited in a pool exit now, before paying for another step, if the
        thresholds moved (a budget controller) so that their last score clears them; returns the
        rest. With fixed thresholds nobody exits here: the same test failed when they were pooled."""
        late = (chunk.scores[:, -1] >= self.thresholds[done - 1]) & ~chunk.shadow
        if not late.any():
            return [], chunk
        idx = np.flatnonzero(late)
        store.release(chunk.slots[idx])
        rows = list(self._rows(chunk, done, idx, np.zeros(idx.size, bool), chunk.top[0], chunk.top[1], chunk.state))
        if self.controller is not None:
            self.controller.record(np.full(idx.size, done))
        self.stats.late_exits += int(idx.size)
        return rows, chunk.select(np.flatnonzero(~late), self.device)

    @torch.inference_mode()
    def _step(self, done: int, chunk: _Chunk, pools: list[_Pool], store: _ImageStore) -> Iterator[dict[str, Any]]:
        """Run step done+1 on `chunk`; emit the images that exit or fail, pool the rest."""
        if done and self.controller is not None:
            rows, chunk = self._late_exits(done, chunk, store)
            yield from rows
            if not len(chunk):
                return
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
        logits = logits.float()
        top_probs, top_labels = logits.softmax(dim=-1).topk(self.top_k, dim=-1)  # (n, k)
        score = exit_scores(logits).cpu().numpy()  # (n,), NaN where the logits are not finite
        scores = np.concatenate([chunk.scores, score[:, None]], axis=1)
        failed = np.isnan(score)

        if step == self.T:
            exits = np.ones(len(chunk), bool)
        else:
            exits = ((score >= self.thresholds[done]) & ~chunk.shadow) | failed
        exit_idx = np.flatnonzero(exits)
        if exit_idx.size:
            store.release(chunk.slots[exit_idx])
            yield from self._rows(chunk, step, exit_idx, failed[exit_idx], top_probs, top_labels, state)
            if self.controller is not None:
                sample = chunk.shadow[exit_idx] & ~failed[exit_idx]
                shadow_rows = scores[exit_idx][sample]
                self.controller.record(np.full(exit_idx.size, step), shadow_rows if shadow_rows.size else None)
        stay_idx = np.flatnonzero(~exits)
        if stay_idx.size:
            after = _Chunk(chunk.keys, chunk.slots, state, chunk.shadow, scores, (top_probs, top_labels))
            pools[step].add(after.select(stay_idx, self.device))
            self.stats.max_waiting = max(self.stats.max_waiting, pools[step].size)

    def _rows(
        self,
        chunk: _Chunk,
        step: int,
        idx: np.ndarray,
        failed: np.ndarray,
        top_probs: Tensor,
        top_labels: Tensor,
        state: GFState,
    ) -> Iterator[dict[str, Any]]:
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
        self.stats.errors += int(failed.sum())
        self.stats.macs += macs * n
        for j, i in enumerate(idx):
            if failed[j]:
                yield _error_row(
                    chunk.keys[i],
                    step,
                    macs,
                    glimpses[j],
                    f"model output is not finite at step {step} (NaN or Inf logits)",
                )
                continue
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
                "error": None,
            }

    def _refused_rows(self, keys: list[Hashable]) -> Iterator[dict[str, Any]]:
        self.stats.refused += len(keys)
        self.stats.errors += len(keys)
        for key in keys:
            yield _error_row(key, 0, 0.0, [], "input image has non-finite pixels (NaN or Inf)")


def _finite_images(images: Tensor) -> np.ndarray:
    """(n,) bool: which images have only finite pixels. A non-finite pixel makes the image's sum
    non-finite, so one reduction answers for nearly every batch; only images whose sum is not
    finite (bad pixels, or finite ones that overflowed) get the exact per-pixel check."""
    flat = images.flatten(1)
    ok = torch.isfinite(flat.sum(dim=1))
    if not bool(ok.all()):
        suspect = (~ok).nonzero().flatten()
        ok[suspect] = torch.isfinite(flat[suspect]).all(dim=1)
    return ok.cpu().numpy()


def _error_row(key: Hashable, step: int, macs: float, glimpses: list, error: str) -> dict[str, Any]:
    """A row for an image without a usable prediction: what it cost, and why."""
    return {
        "key": key,
        "label": None,
        "label_name": None,
        "confidence": None,
        "topk_labels": [],
        "topk_probs": [],
        "exit_step": step,
        "macs": macs,
        "glimpses": glimpses,
        "error": error,
    }


def batched(keys: Sequence[Hashable], images: Tensor, size: int) -> Iterator[tuple[list[Hashable], Tensor]]:
    """Split one keyed tensor into (keys, images) batches of `size`: input for `EarlyExitEngine.run`."""
    for start in range(0, len(keys), size):
        yield list(keys[start : start + size]), images[start : start + size]
