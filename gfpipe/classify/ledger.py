"""The budget ledger: one place where every model actor's spend meets the budget controller.

The driver starts one `BudgetLedger` as a named Ray actor (`num_cpus=0`); each actor call
reports its observations (`gfpipe.budget.control.BudgetReport`) under a *call key* that depends
only on the call's input, with an *attempt* token that is new for every try. Ray retries a call
whose actor died, and the retry reports again: its first report under a new attempt takes the
old attempt's tally back out of the controller, so spend is counted once (RAY_NOTES.md: a ledger
that only adds over-counted 1962 for 1662 rows). A call's tally is final once the call has
written its parts and says so (`final=True`); a later attempt of a final call (Ray retrying
after the yield was lost) still replaces it.

Plain Python: `gfpipe.classify.pipeline` wraps it with `ray.remote`; tests use it directly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from gfpipe.budget.control import BudgetController, BudgetReport


class BudgetLedger:
    """Holds the controller, the per-call tallies, and the spend timeline of one run.

    `costs` are the controller's units (MACs, or seconds for a time budget); `step_macs` are
    always MACs, so realized MACs are known whatever the budget's unit. `prior_macs` and
    `prior_images` are the spend of shards done in earlier runs (they count in the reported
    totals, not in the controller, whose target already accounts for them).
    """

    def __init__(
        self,
        costs: Any,
        target: float,
        calibration_scores: Any,
        step_macs: Any,
        *,
        total_images: int | None = None,
        controller_options: dict[str, Any] | None = None,
        extra_macs: float = 0.0,
    ) -> None:
        self.controller = BudgetController(
            costs, target, calibration_scores, total_images=total_images, **(controller_options or {})
        )
        self.step_macs = np.asarray(step_macs, dtype=np.float64)
        self.initial_thresholds = self.controller.thresholds.tolist()
        self.extra_macs = float(extra_macs)  # e.g. the --calibrate pass
        self.tallies: dict[str, dict[str, Any]] = {}
        self._exits = np.zeros(self.step_macs.size, np.int64)  # the sum of the tallies' exits
        self.started = time.time()
        self.timeline: list[dict[str, float]] = []
        self.replaced_attempts = 0

    def report(self, call: str, attempt: str, report: BudgetReport, final: bool = False) -> list[float]:
        """Add one call's observations (replacing an earlier attempt's); returns the thresholds."""
        tally = self.tallies.get(call)
        if tally is not None and tally["attempt"] != attempt:
            undo = BudgetReport(-tally["exits"], np.zeros((0, tally["exits"].size), np.float32), 0, -tally["admitted"])
            self.controller.merge([undo])
            self._exits -= tally["exits"]
            self.replaced_attempts += 1
            tally = None
        if tally is None:
            tally = {"attempt": attempt, "exits": np.zeros(self.step_macs.size, np.int64), "admitted": 0}
            self.tallies[call] = tally
        tally["exits"] = tally["exits"] + report.exits
        self._exits += report.exits
        tally["admitted"] += int(report.admitted)
        tally["final"] = bool(final)
        thresholds = self.controller.merge([report])
        self._mark()
        return thresholds.tolist()

    def shadow(self) -> tuple[float, int]:
        """(share, seed) of the shadow sample, which every actor must pick the same way."""
        return self.controller.shadow_share, self.controller.seed

    def thresholds(self) -> list[float]:
        return self.controller.thresholds.tolist()

    def _mark(self) -> None:
        """A timeline point when 32 more images or a second more have passed since the last one."""
        images, seconds = self.images(), time.time() - self.started
        last = self.timeline[-1] if self.timeline else None
        if last is None or images - last["images"] >= 32 or seconds - last["seconds"] >= 1.0:
            self.timeline.append({"seconds": seconds, "images": images, "mean_macs": self.mean_macs()})
            if len(self.timeline) > 4000:  # keep the plot's data small: every other old point
                self.timeline = self.timeline[:2000:2] + self.timeline[2000:]

    def exits(self) -> np.ndarray:
        """Images by exit step over every call's current attempt (kept as a running sum: summing
        the tallies on every report grew with the number of calls)."""
        return self._exits.copy()

    def images(self) -> int:
        return int(self.exits().sum())

    def spent_macs(self) -> float:
        """MACs of every image reported so far in this run (the calibration pass not included)."""
        return float(self.exits() @ self.step_macs)

    def mean_macs(self) -> float:
        images = self.images()
        return self.spent_macs() / images if images else math.nan

    def status(self) -> dict[str, Any]:
        """What the driver's progress line and summary need, in one round trip."""
        return {
            "images": self.images(),
            "exits": self.exits().tolist(),
            "spent_macs": self.spent_macs(),
            "extra_macs": self.extra_macs,
            "seconds": time.time() - self.started,
            "thresholds": self.thresholds(),
            "initial_thresholds": self.initial_thresholds,
            "calls": len(self.tallies),
            "replaced_attempts": self.replaced_attempts,
            "timeline": list(self.timeline),
            "controller_images": self.controller.images,
            "controller_spent": self.controller.spent,
        }
