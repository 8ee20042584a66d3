"""Labels against a model's classes: the class names data declares, and the map between them.

Data says what its label indices mean with a `classes.txt` (line i = name of label i), which
`gfpipe synth` writes at OUT/classes.txt for the splits in OUT/SPLIT/. A model knows its class
names from its checkpoint. `LabelMap` turns a data label into the model's index by name, and
refuses what would make an accuracy meaningless: data classes the model does not have, labels
beyond the model's classes, text labels that name no class. Read the data with
`ReadOptions(class_names=label_map.read_class_names)` so text labels land in the same index
space as numeric ones.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gfpipe.data.io import (
    StorageError,
    filesystem,
    join_uri,
    read_bytes,
    storage_error,
    to_uri,
)

CLASSES_FILE = "classes.txt"

_PATTERN = re.compile(r"[*?\[{]")


def dataset_class_names(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, ...] | None:
    """The class names the data at `uri` declares, from a `classes.txt` in its folder or the
    folder's parent (the first found); None when there is none.

    `uri` is what a reader takes: a folder or key prefix, a shard file, or a glob/brace pattern
    (the folder of its part before the first pattern character). A file with blank lines in the
    middle or repeated names is a ValueError: line numbers are the labels, so they must be exact.
    """
    for folder in _candidate_folders(uri, storage_options):
        candidate = join_uri(folder, CLASSES_FILE)
        try:
            data = read_bytes(candidate, storage_options)
        except FileNotFoundError:
            continue
        except StorageError as exc:
            if isinstance(exc.__cause__, IsADirectoryError):
                continue
            raise
        return parse_class_names(data.decode("utf-8-sig"), candidate)
    return None


def parse_class_names(text: str, source: str = CLASSES_FILE) -> tuple[str, ...]:
    """Class names from a classes.txt text: one per line, line i = label i (blank tail lines ok)."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise ValueError(
            f"{source}: line {blank[0]} is blank, but line i names label i - 1; remove the blank "
            "line or put the class name there"
        )
    if not lines:
        raise ValueError(f"{source} is empty; write one class name per line (line 1 = label 0)")
    seen: dict[str, int] = {}
    for i, name in enumerate(lines):
        if name in seen:
            raise ValueError(
                f"{source}: class {name!r} is on lines {seen[name] + 1} and {i + 1}; each name must be "
                "unique because names are matched to the model's classes"
            )
        seen[name] = i
    return tuple(lines)


def _candidate_folders(uri: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """The data folder of `uri` and its parent, as URIs in `uri`'s style."""
    fs, path = filesystem(uri, storage_options)
    cut = _PATTERN.search(path)
    if cut:
        folder = posixpath.dirname(path[: cut.start()])
    else:
        stripped = path.rstrip("/")
        try:
            is_dir = path.endswith("/") or fs.isdir(stripped)
        except Exception as exc:  # noqa: BLE001 - translated, re-raised
            raise storage_error(exc, uri, fs) from exc
        folder = stripped if is_dir else posixpath.dirname(stripped)
    folders = [folder]
    parent = posixpath.dirname(folder.rstrip("/"))
    if parent and parent != folder and (not _is_remote(fs) or "/" in folder.strip("/")):
        folders.append(parent)  # (never above an S3 bucket)
    return [to_uri(fs, f, uri) for f in folders if f]


def _is_remote(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" not in protocols and "local" not in protocols


def _abbrev(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Maps data label indices to a model's class indices, refusing labels the model lacks.

    Build it with `LabelMap.build`. With data class names, label i means the class named
    `data_class_names[i]` and maps to that name's index in the model; without them labels are
    taken to be the model's indices already and only checked against its number of classes.
    `record_label` is the `record -> model index` function evaluation takes (-1: unlabelled).
    """

    model_class_names: tuple[str, ...]
    data_class_names: tuple[str, ...] | None
    _index: tuple[int, ...] | None  # data index -> model index (None: identity)

    @classmethod
    def build(cls, model_class_names: Sequence[str], data_class_names: Sequence[str] | None = None) -> LabelMap:
        """A map from the data's classes to the model's; a ValueError when the data names a
        class the model does not have (both sets shown, the differences first). A subset is
        fine: a test set may hold only some of the model's classes."""
        model = tuple(str(n) for n in model_class_names)
        if not model:
            raise ValueError("the model has no class names; give the checkpoint its class names")
        if data_class_names is None:
            return cls(model, None, None)
        data = tuple(str(n) for n in data_class_names)
        position = {name: i for i, name in enumerate(model)}
        missing = [n for n in data if n not in position]
        if missing:
            unused = [n for n in model if n not in set(data)]
            raise ValueError(
                f"the data's classes are not the model's: {len(missing)} of the data's "
                f"{len(data)} classes are not among the model's {len(model)}: {_abbrev(missing)} "
                f"(model classes not in the data: {_abbrev(unused) or 'none'}; data classes: "
                f"{_abbrev(data)}; model classes: {_abbrev(model)}); evaluate with data written "
                "for this model's classes, or fix the data's classes.txt"
            )
        index = tuple(position[n] for n in data)
        return cls(model, data, None if index == tuple(range(len(data))) else index)

    @property
    def read_class_names(self) -> tuple[str, ...]:
        """The names to read text labels with (`ReadOptions.class_names`): the data's when it
        has them (labels are data indices), else the model's."""
        return self.data_class_names if self.data_class_names is not None else self.model_class_names

    def check_index(self, label: int, key: str | None = None) -> None:
        """ValueError unless `label` (a data label index) belongs to a class the model has."""
        where = f"{key}: " if key else ""
        if isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(f"{where}label {label!r} is not an integer class index")
        if self.data_class_names is not None:
            if not 0 <= label < len(self.data_class_names):
                raise ValueError(
                    f"{where}label {label} is outside the data's {len(self.data_class_names)} classes "
                    f"(classes.txt has labels 0..{len(self.data_class_names) - 1}); fix the label or "
                    "the data's classes.txt"
                )
            return
        if not 0 <= label < len(self.model_class_names):
            raise ValueError(
                f"{where}label {label} is not a class of this model, which has "
                f"{len(self.model_class_names)} classes (0..{len(self.model_class_names) - 1}); the "
                "data is labelled for other classes: add a classes.txt naming them, or use a "
                "model trained on them"
            )

    def map(self, label: int, key: str | None = None) -> int:
        """The model's class index for data label `label` (checked; see `check_index`)."""
        self.check_index(label, key)
        return label if self._index is None else self._index[label]

    def record_label(self, record: Any) -> int:
        """The model's class index for a record (a `RawRecord` or a `read_images` row), -1 when
        it is unlabelled; a text label that names no class, or an out-of-range label, is a
        ValueError naming the record's key."""
        get = record.get if isinstance(record, Mapping) else lambda name: getattr(record, name, None)
        key = get("key")
        unknown = get("unknown_label")
        if unknown is not None:
            raise ValueError(
                f"{key}: label {unknown!r} is not one of the class names "
                f"({_abbrev(self.read_class_names)}); fix the label, or read with the class names "
                "the data uses"
            )
        label = get("label")
        return -1 if label is None else self.map(int(label), key)
