"""Where the classify job's outputs live, and what makes a shard done.

OUTPUT/
  <shard id>/part-<first>-<last>.parquet   result rows of the shard's records first..last (ordinals
                                            in reading order), written by the model actors
  report.html                              the run's report (gfpipe.report)
  _gfpipe/records/<shard id>.json          how many records the reader found in the shard
  _gfpipe/done/<shard id>.json             the done marker: the shard's fingerprint, counts, cost
  _gfpipe/summary.json                     the run summary
  _gfpipe/plots/*.png                      the report's plots

Readers of OUTPUT as a Parquet dataset (pyarrow, Ray, Spark) skip `_gfpipe` (a leading underscore
marks it hidden). Part names depend only on which records they hold, so a retried actor call
overwrites its own parts instead of adding new ones; a shard is done when its parts tile
0..records-1 exactly, and only then does it get its marker. Shard ids are the file name plus a
hash of the full URI, so two `train-000.tar` in different folders never collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gfpipe.data.io import filesystem, join_uri, read_bytes, storage_error, to_uri

log = logging.getLogger(__name__)

STATE_DIR = "_gfpipe"
REPORT_FILE = "report.html"
_PART = re.compile(r"^part-(\d{8,})-(\d{8,})\.parquet$")


def shard_id(uri: str) -> str:
    """A folder name for the shard: its file name (safe characters only) and 10 hex of the URI's hash."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "shard"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80].lstrip("._") or "shard"
    return f"{safe}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"


def part_name(first: int, last: int) -> str:
    return f"part-{first:08d}-{last:08d}.parquet"


def parse_part(name: str) -> tuple[int, int] | None:
    """'part-00000010-00000019.parquet' -> (10, 19); None for anything else (temp files, strays)."""
    match = _PART.match(name.rsplit("/", 1)[-1])
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    return (first, last) if last >= first else None


def contiguous_runs(ordinals: Sequence[int]) -> list[tuple[int, int, list[int]]]:
    """Sorted ordinals -> [(first, last, positions in the input)] for each run of consecutive ones."""
    order = sorted(range(len(ordinals)), key=lambda i: ordinals[i])
    runs: list[tuple[int, int, list[int]]] = []
    for i in order:
        value = int(ordinals[i])
        if runs and value == runs[-1][1] + 1:
            first, _, members = runs[-1]
            members.append(i)
            runs[-1] = (first, value, members)
        else:
            runs.append((value, value, [i]))
    return runs


def covers_exactly(ranges: Sequence[tuple[int, int]], records: int) -> bool:
    """Whether the (first, last) ranges tile 0..records-1 with no gap and no overlap."""
    expected = 0
    for first, last in sorted(ranges):
        if first != expected:
            return False
        expected = last + 1
    return expected == records


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a shard's content without reading it: size and ETag (or mtime locally)."""

    size: int | None
    version: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "version": self.version}

    @staticmethod
    def from_info(info: Mapping[str, Any]) -> Fingerprint:
        size = info.get("size")
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        return Fingerprint(None if size is None else int(size), None if version is None else str(version).strip('"'))


class OutputLayout:
    """The URIs of one output folder, and the storage operations the driver and actors need."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.options = dict(storage_options) if storage_options else None

    # ------------------------------------------------------------------ names

    def shard_dir(self, sid: str) -> str:
        return join_uri(self.root, sid)

    def part_uri(self, sid: str, first: int, last: int) -> str:
        return join_uri(self.root, sid, part_name(first, last))

    def state(self, *parts: str) -> str:
        return join_uri(self.root, STATE_DIR, *parts)

    def records_uri(self, sid: str) -> str:
        return self.state("records", f"{sid}.json")

    def done_uri(self, sid: str) -> str:
        return self.state("done", f"{sid}.json")

    @property
    def summary_uri(self) -> str:
        return self.state("summary.json")

    @property
    def report_uri(self) -> str:
        return join_uri(self.root, REPORT_FILE)

    # ------------------------------------------------------------------ reading state

    def _fs(self) -> tuple[Any, str]:
        return filesystem(self.root, self.options)

    def list_json(self, folder: str) -> dict[str, dict]:
        """{shard id: parsed JSON} of the files in _gfpipe/<folder>/ (unreadable ones skipped)."""
        import json

        fs, path = self._fs()
        base = f"{path}/{STATE_DIR}/{folder}"
        try:
            names = fs.ls(base, detail=False) if fs.exists(base) else []
        except FileNotFoundError:
            names = []
        except Exception as exc:  # noqa: BLE001 - translated
            raise storage_error(exc, to_uri(fs, base, self.root), fs) from exc
        out: dict[str, dict] = {}
        for name in names:
            leaf = name.rstrip("/").rsplit("/", 1)[-1]
            if not leaf.endswith(".json"):
                continue
            try:
                out[leaf[: -len(".json")]] = json.loads(read_bytes(to_uri(fs, name, self.root), self.options))
            except (ValueError, OSError) as exc:
                log.warning("ignoring unreadable %s: %s", name, exc)
        return out

    def part_ranges(self, sid: str) -> list[tuple[int, int]]:
        """The (first, last) ranges of the shard's part files now in storage."""
        fs, path = self._fs()
        folder = f"{path}/{sid}"
        with contextlib.suppress(Exception):
            fs.invalidate_cache(folder)
        try:
            names = fs.ls(folder, detail=False) if fs.exists(folder) else []
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001 - translated
            raise storage_error(exc, to_uri(fs, folder, self.root), fs) from exc
        return [r for r in (parse_part(n) for n in names) if r is not None]

    def fingerprint(self, uri: str) -> Fingerprint:
        """The shard's size and ETag/mtime now (a folder shard: its file count and newest mtime)."""
        fs, path = filesystem(uri, self.options)
        try:
            info = fs.info(path)
            if info.get("type") == "directory":
                files = fs.find(path, detail=True)
                newest = max((str(f.get("mtime") or f.get("LastModified") or "") for f in files.values()), default="")
                return Fingerprint(len(files), newest or None)
        except Exception as exc:  # noqa: BLE001 - translated
            raise storage_error(exc, uri, fs) from exc
        return Fingerprint.from_info(info)

    # ------------------------------------------------------------------ removing

    def remove_shard_outputs(self, sid: str) -> None:
        """Delete a shard's parts, record count and done marker (before it is classified again)."""
        fs, path = self._fs()
        for target, recursive in (
            (f"{path}/{sid}", True),
            (f"{path}/{STATE_DIR}/records/{sid}.json", False),
            (f"{path}/{STATE_DIR}/done/{sid}.json", False),
        ):
            try:
                if fs.exists(target):
                    fs.rm(target, recursive=recursive)
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001 - translated
                raise storage_error(exc, to_uri(fs, target, self.root), fs) from exc

    def remove_all(self) -> int:
        """--overwrite: delete everything gfpipe wrote here (shard folders holding part files,
        _gfpipe, report.html), and nothing else. Returns the number of shard folders removed."""
        fs, path = self._fs()
        removed = 0
        try:
            if not fs.exists(path):
                return 0
            for entry in fs.ls(path, detail=True):
                name = entry["name"].rstrip("/")
                leaf = name.rsplit("/", 1)[-1]
                if leaf == STATE_DIR or (leaf == REPORT_FILE and entry.get("type") != "directory"):
                    fs.rm(name, recursive=True)
                elif entry.get("type") == "directory" and any(parse_part(n) for n in fs.ls(name, detail=False)):
                    fs.rm(name, recursive=True)
                    removed += 1
        except Exception as exc:  # noqa: BLE001 - translated
            raise storage_error(exc, self.root, fs) from exc
        return removed
