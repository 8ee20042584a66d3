"""Checks before Ray starts: a training config against its data and storage, as a `RunPlan`.

`prepare_run` checks everything a user can get wrong before any Ray work: the config, that
train/val (and calibration) shards exist, their class names (from `data.class_names`, else the
data's classes.txt or class folders; the splits must agree), the model's num_classes, that the
run storage and the output folder can be written, and whether this run (same name and storage)
already started or finished. It reads only listings, classes.txt files and the run folder's
records (`RUN_RECORD`, `DONE_RECORD`), so it needs no Ray and decodes no image: this module
imports no Ray.

Resume: re-running with the same `run.name` and `run.storage` continues the run, so the plan's
`state` says whether it is new, started (it will resume) or finished (it is not trained again
unless `restart=True`, which starts it over). A run started with another config is an error: a
resume would load state that does not fit it (only how it runs may change: `_RESUMABLE_CHANGES`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fsspec.core import split_protocol

from gfpipe.config import ConfigError
from gfpipe.data.io import ensure_writable, join_uri, list_shards, read_bytes
from gfpipe.data.labels import LabelMap, dataset_class_names
from gfpipe.data.shards import ReadOptions, Shard, class_folder_names, discover_shards
from gfpipe.model.gfnet import GFNet, GFNetConfig, ModelCard
from gfpipe.train.config import TrainConfig, config_dict

RUN_RECORD = "gfpipe-run.json"
"""Written in the run folder when a run starts: the resolved config and class names."""

DONE_RECORD = "gfpipe-done.json"
"""Written in the run folder when a run has finished: where its checkpoint is."""

MODEL_FILE = "model.pt"

# Config keys that may change between a run and its resumption (how it runs, not what it trains).
_RESUMABLE_CHANGES = (
    "scaling.",
    "run.max_failures",
    "run.keep_checkpoints",
    "run.output",
    "log_every",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Split:
    """One labelled input: its URI, shards, how to read them and how labels map to the model."""

    name: str  # train, val, calibration
    uri: str
    shards: tuple[Shard, ...]
    read_options: ReadOptions
    label_map: LabelMap
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A checked training run (see `prepare_run`); `train` takes it as it is."""

    config: TrainConfig  # model.num_classes set from the class names; local URIs absolute
    class_names: tuple[str, ...]
    splits: dict[str, Split]
    run_dir: str  # STORAGE/NAME
    output: str
    storage_options: dict[str, Any] | None
    state: str  # "new", "started" (will resume) or "finished"
    restart: bool = False  # start over: the run folder is removed before training

    @property
    def name(self) -> str:
        return self.config.run.name


def prepare_run(
    config: TrainConfig, storage_options: Mapping[str, Any] | None = None, restart: bool = False
) -> RunPlan:
    """Check a training config against its data and storage; raise ValueError/OSError naming the fix.

    Reads only listings, classes.txt files and the run folder's records: no image is decoded
    and Ray is not needed.
    """
    config = config.check()
    options = dict(storage_options) if storage_options else None
    if not _NAME.match(config.run.name):
        raise ConfigError(
            f"run.name {config.run.name!r} must be a plain folder name (letters, digits, '.', '_', '-'), "
            "e.g. glyphs-resnet50"
        )
    if config.preprocessing.crop != config.model.input_size:
        raise ConfigError(
            f"preprocessing.crop {config.preprocessing.crop} must equal model.input_size "
            f"{config.model.input_size}: the model sees the crop"
        )
    if not config.run.storage:
        raise ConfigError(
            "run.storage is empty; set it (--storage) to a folder or an s3://bucket/prefix that every node can reach"
        )
    data = config.data
    storage = _absolute(config.run.storage)
    run_dir = join_uri(storage, config.run.name)
    output = _absolute(config.run.output) if config.run.output else join_uri(run_dir, MODEL_FILE)
    data = dataclasses.replace(
        data,
        train=_absolute(data.train),
        val=_absolute(data.val),
        calibration=_absolute(data.calibration) if data.calibration else None,
    )
    uris = {"train": data.train, "val": data.val}
    if data.calibration:
        uris["calibration"] = data.calibration
    for uri in uris.values():
        list_shards(uri, options)  # a missing or empty location is the first thing to say
    for key in ("checkpoint", "encoders", "global_encoder"):
        uri = getattr(config.init, key)
        if uri and list_shards(_absolute(uri), options) != [_absolute(uri)]:
            raise ValueError(f"init.{key} {uri} is not a single file; give the URI of a weights file")
    declared = {split: _declared_classes(uri, data.class_folders, options) for split, uri in uris.items()}
    class_names = tuple(data.class_names) if data.class_names else declared["train"]
    if not class_names:
        raise ValueError(
            f"{data.train}: no class names: the data has no classes.txt"
            f"{'' if data.class_folders else ' (and data.class_folders is off)'}; set data.class_names "
            "(e.g. --set 'data.class_names=[cat, dog]'), add a classes.txt (line i names label i), "
            "or use class folders (data.class_folders: true)"
        )
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"data.class_names has repeated names: {_abbrev(class_names)}")
    reference = ("data.class_names", "the config") if data.class_names else ("train", data.train)
    for split, names in declared.items():
        if names is None or (split == "train" and not data.class_names):
            continue
        if set(names) != set(class_names):
            raise ValueError(_class_mismatch(reference, class_names, (split, uris[split]), names))
    default_classes = GFNetConfig().num_classes
    if config.model.num_classes not in (default_classes, len(class_names)):
        raise ConfigError(
            f"model.num_classes is {config.model.num_classes} but the data has {len(class_names)} classes "
            f"({_abbrev(class_names)}); remove model.num_classes (it is set from the class names) or fix the data"
        )
    model_config = dataclasses.replace(config.model, num_classes=len(class_names))
    init = {k: _absolute(v) for k, v in dataclasses.asdict(config.init).items() if v}
    config = dataclasses.replace(
        config,
        model=model_config,
        init=dataclasses.replace(config.init, **init),
        data=dataclasses.replace(data, class_names=tuple(class_names)),
        run=dataclasses.replace(config.run, storage=storage, output=output),
    )
    GFNet(model_config, ModelCard(tuple(class_names), config.preprocessing))  # architecture errors now
    splits = {split: _split(split, uri, declared[split], class_names, config, options) for split, uri in uris.items()}
    if "calibration" not in splits:
        val = splits["val"]
        splits["calibration"] = dataclasses.replace(val, name="calibration", limit=data.max_calibration_images)
    ensure_writable(storage, options)
    output_folder = posixpath.dirname(output.rstrip("/"))
    if output_folder and output_folder != run_dir:
        ensure_writable(output_folder, options)
    state = _run_state(config, run_dir, options, restart)
    return RunPlan(config, tuple(class_names), splits, run_dir, output, options, state, restart)


def _split(
    split: str,
    uri: str,
    declared: tuple[str, ...] | None,
    class_names: tuple[str, ...],
    config: TrainConfig,
    options: Mapping[str, Any] | None,
) -> Split:
    data = config.data
    label_map = LabelMap.build(class_names, None if data.class_folders else declared)
    read_options = ReadOptions(
        format=data.format,
        class_folders=data.class_folders,
        class_names=label_map.read_class_names,
        strict_classes=data.class_folders,
    )
    shards = discover_shards(uri, options, read_options)
    if data.class_folders and any(shard.format != "folder" for shard in shards):
        raise ValueError(
            f"data.class_folders is for image folders, but {uri} holds {shards[0].format} shards "
            "(their labels come from the shards and classes.txt); set data.class_folders: false"
        )
    limit = {"val": data.max_val_images, "calibration": data.max_calibration_images}.get(split)
    return Split(split, uri, tuple(shards), read_options, label_map, limit)


def _declared_classes(uri: str, class_folders: bool, options: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    if class_folders:
        return class_folder_names(uri, options) or None
    return dataset_class_names(uri, options)


def _class_mismatch(a: tuple[str, str], a_names: Sequence[str], b: tuple[str, str], b_names: Sequence[str]) -> str:
    """Two sets of class names that differ, each (label, where) named, the differences first."""
    only_a = [n for n in a_names if n not in set(b_names)]
    only_b = [n for n in b_names if n not in set(a_names)]
    return (
        f"the classes of {a[0]} ({a[1]}) and {b[0]} ({b[1]}) differ: only in {a[0]}: {_abbrev(only_a) or 'none'}; "
        f"only in {b[0]}: {_abbrev(only_b) or 'none'} ({a[0]}: {_abbrev(a_names)}; {b[0]}: {_abbrev(b_names)}); "
        "train, val and calibration data must name the same classes (fix their classes.txt or folders)"
    )


def _abbrev(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _absolute(uri: str) -> str:
    """Local paths made absolute (Ray workers run in other folders); other URIs as they are."""
    protocol, path = split_protocol(uri)
    if protocol not in (None, "file", "local"):
        return uri
    return os.path.abspath(os.path.expanduser(path))


def _run_state(config: TrainConfig, run_dir: str, options: Mapping[str, Any] | None, restart: bool) -> str:
    """The run's state in its folder: new, started (resume) or finished. A run started with
    another config is an error (a resume would load state that does not fit it)."""
    record = _read_json(join_uri(run_dir, RUN_RECORD), options)
    if record is None or restart:
        return "new"
    changes = _config_changes(record.get("config") or {}, config_dict(config))
    if changes:
        raise ValueError(
            f"run {config.run.name!r} in {config.run.storage} was started with another config "
            f"({'; '.join(changes[:5])}{'; ...' if len(changes) > 5 else ''}); resume it with the same "
            "config, choose another run.name (--name), or start it over (--restart)"
        )
    done = _read_json(join_uri(run_dir, DONE_RECORD), options)
    return "started" if done is None else "finished"


def _config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += _config_changes(a, b, f"{path}.")
        elif a != b and not any(path.startswith(p) for p in _RESUMABLE_CHANGES):
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


def _read_json(uri: str, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    try:
        return json.loads(read_bytes(uri, options))
    except FileNotFoundError:
        return None
