"""Progress of long work: done / total, rate and ETA, as a bar on a terminal, else plain lines.

A terminal gets a tqdm bar on stderr. Anything else (a log file, `ray job logs`, CI) gets one
plain log line every `interval` seconds and a last one at the end, so logs stay readable. The
total may be unknown (then no percentage or ETA is shown).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from gfpipe.budget.grammar import format_duration

log = logging.getLogger(__name__)


class Progress:
    """Counts work items; `update(n)` after each chunk, `close()` at the end (or use `with`)."""

    def __init__(
        self, what: str, total: int | None = None, unit: str = "images", interval: float = 10.0, bar: bool | None = None
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.interval = interval
        self.done = 0
        self.started = time.monotonic()
        self._last_line = self.started
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar: Any = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            log.info("%s", self.line())

    def line(self) -> str:
        """`what: done / total (pct), rate, ETA` in words, for logs."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,}"
        if self.total:
            text += f" / {self.total:,} {self.unit} ({100.0 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.done:
            log.info("%s in %s", self.line(), format_duration(time.monotonic() - self.started))
