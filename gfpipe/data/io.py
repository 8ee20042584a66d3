"""Storage access through fsspec: local paths, `file://`, `s3://` and any installed protocol.

Everything in gfpipe that opens, lists or writes a URI goes through this module, so one set of
rules holds everywhere: credentials and endpoint come from the standard AWS environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ~/.aws/...) plus explicit `storage_options`
(`{"endpoint_url": ...}` for an S3-compatible store), and storage failures become
`StorageError`s that name the URI and say what to do instead of a bare botocore traceback.

S3 first contact: the first time a filesystem is used, one cheap request (HEAD of the bucket)
checks that the endpoint answers at all, with few retries and a short connect timeout, so an
unreachable endpoint fails in about `PROBE_CONNECT_TIMEOUT` seconds instead of after botocore's
and s3fs's full retry cycles (8-22 s, much more for an endpoint that drops packets). Once it
has answered, normal operations keep the full retries. The probe honours the user's own
`config_kwargs["connect_timeout"]`, `config_kwargs["retries"]`, `config_kwargs["read_timeout"]`
and gfpipe's top-level `retries` (s3fs's per-call retry count); if the endpoint has not answered
within `SLOW_CONNECT_LOG_SECONDS`, an INFO line on this module's logger says what is being tried.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import difflib
import enum
import functools
import inspect
import itertools
import json
import logging
import math
import os
import pathlib
import posixpath
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
from fsspec.core import split_protocol

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_S3 = ("s3", "s3a")

PROBE_CONNECT_TIMEOUT = 2.0
"""Seconds the first-contact probe waits for a TCP connection (unless config_kwargs says otherwise)."""

PROBE_READ_TIMEOUT = 10.0
"""Seconds the first-contact probe waits for an answer once connected (unless config_kwargs says)."""

SLOW_CONNECT_LOG_SECONDS = 1.0
"""After this long without a first answer, an INFO line names the endpoint being tried."""

GFPIPE_S3_OPTIONS = ("endpoint_url", "retries")
"""Top-level S3 storage options gfpipe handles itself: `endpoint_url` (moved under client_kwargs
for s3fs versions without the argument) and `retries` (s3fs's retry count per call, default 5)."""


class StorageError(OSError):
    """A storage operation failed; the message names the URI and what to do about it."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A bucket, file or folder does not exist, or a pattern matched nothing."""


class StoragePermissionError(StorageError, PermissionError):
    """Credentials are missing or were rejected for this URI."""


class StorageConnectionError(StorageError, ConnectionError):
    """The storage endpoint could not be reached."""


class NoShardsError(StorageNotFoundError):
    """`list_shards` found no file for the given pattern."""


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for `uri` and the path inside it (`bucket/key` for S3).

    `storage_options` go to the filesystem constructor, after `check_storage_options` (an
    unknown key is a ValueError that names it). For S3, `GFPIPE_S3_OPTIONS` are also accepted,
    and the first use of a filesystem checks that its endpoint answers (see the module doc):
    an unreachable endpoint raises `StorageConnectionError` here, within a few seconds.
    """
    protocol, _ = split_protocol(uri)
    check_storage_options(uri, storage_options)
    options = _normalise_options(protocol, storage_options)
    retries = options.pop("retries", None) if protocol in _S3 else None
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 1):
        raise ValueError(
            f"{uri}: storage option retries must be an integer >= 1 (s3fs attempts per call), got {retries!r}"
        )
    try:
        if retries is None:
            fs, path = fsspec.core.url_to_fs(uri, **options)
        else:
            fs, path = _fs_with_retries(uri, options, retries)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"{uri}: no filesystem for protocol {protocol!r} ({exc}); install the fsspec "
            "implementation for it (s3fs for s3://) or fix the URI"
        ) from exc
    if protocol in _S3:
        _first_contact(fs, uri, options, retries)
    return fs, path


def check_storage_options(uri: str, options: Mapping[str, Any] | None, flag: str = "storage_options") -> None:
    """Raise ValueError when `options` holds a key the filesystem for `uri` does not accept.

    Without this a misspelled key reaches the filesystem (for S3, aiobotocore) as a raw
    TypeError deep inside a run. For s3/s3a the accepted keys are s3fs's named arguments, those
    fsspec takes through **kwargs (listings cache, skip_instance_cache), the aiobotocore session's
    (`profile`), and `GFPIPE_S3_OPTIONS`; `config_kwargs` and `client_kwargs` are checked
    against botocore's Config and create_client too. Other protocols are checked against their
    class's __init__ when it takes no **kwargs (else anything goes). `flag` names the option in
    the message (e.g. "--storage-options").
    """
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise ValueError(
            f'{flag} must be a mapping of option names to values (e.g. {{"anon": true}}), got {type(options).__name__}'
        )
    protocol = split_protocol(uri)[0] or "file"
    accepted = _accepted_options(protocol)
    if accepted is None:
        return
    where = f"{protocol}:// storage ({uri})"
    _check_keys(options, accepted, flag, where)
    if protocol in _S3:
        for name, keys in (("config_kwargs", _botocore_config_keys()), ("client_kwargs", _client_keys())):
            nested = options.get(name)
            if nested is None or keys is None:
                continue
            if not isinstance(nested, Mapping):
                raise ValueError(f"{flag}: {name} must be a mapping, got {type(nested).__name__} ({nested!r})")
            _check_keys(nested, keys, f"{flag} {name}", where)


def _check_keys(options: Mapping[str, Any], accepted: frozenset[str], flag: str, where: str) -> None:
    for key in options:
        if key in accepted:
            continue
        close = difflib.get_close_matches(str(key), sorted(accepted), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"{flag}: {key!r} is not an option of {where}; {hint}accepted keys: {', '.join(sorted(accepted))}"
        )


@functools.cache
def _accepted_options(protocol: str) -> frozenset[str] | None:
    """The option names the filesystem class for `protocol` takes (None: it takes any)."""
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return None  # filesystem() reports the missing implementation
    named = _named_parameters(cls.__init__)
    if protocol not in _S3:
        return None if _takes_var_keyword(cls.__init__) else named
    from fsspec.dircache import DirCache

    extra = _named_parameters(DirCache.__init__) | {"skip_instance_cache"}
    try:  # s3fs hands its remaining **kwargs to the aiobotocore session (e.g. profile)
        from aiobotocore.session import AioSession

        extra |= _named_parameters(AioSession.__init__)
    except ImportError:  # pragma: no cover
        pass
    return named | extra | frozenset(GFPIPE_S3_OPTIONS)


@functools.cache
def _botocore_config_keys() -> frozenset[str] | None:
    try:
        from aiobotocore.config import AioConfig
        from botocore.config import Config
    except ImportError:  # pragma: no cover
        return None
    return frozenset(Config.OPTION_DEFAULTS) | _named_parameters(AioConfig.__init__)


@functools.cache
def _client_keys() -> frozenset[str] | None:
    try:
        from aiobotocore.session import AioSession
    except ImportError:  # pragma: no cover
        return None
    # s3fs passes service name and config itself
    return _named_parameters(AioSession._create_client) - {"service_name", "config"}


def _named_parameters(func: Any) -> frozenset[str]:
    params = inspect.signature(func).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params if p.kind in kinds and p.name != "self")


def _takes_var_keyword(func: Any) -> bool:
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(func).parameters.values())


_RETRY_FS: dict[str, Any] = {}
_RETRY_FS_LOCK = threading.Lock()


def _fs_with_retries(uri: str, options: dict[str, Any], retries: Any) -> tuple[Any, str]:
    """An s3fs instance with its own `retries`; fsspec's instance cache cannot tell them apart
    (the value is not a constructor argument), so gfpipe keeps these instances itself."""
    token = fsspec.utils.tokenize(split_protocol(uri)[0], options, retries, os.getpid())
    with _RETRY_FS_LOCK:
        fs = _RETRY_FS.get(token)
        if fs is None:
            fs, path = fsspec.core.url_to_fs(uri, skip_instance_cache=True, **options)
            fs.retries = retries
            _RETRY_FS[token] = fs
            return fs, path
    return fs, fs._strip_protocol(uri)


def _first_contact(fs: Any, uri: str, options: Mapping[str, Any], retries: Any) -> None:
    """Check once per S3 filesystem that its endpoint answers, failing fast when it does not.

    A throwaway client with the user's settings, except that gfpipe's defaults cap the attempts
    (1) and the connect timeout (`PROBE_CONNECT_TIMEOUT`) where the user set none, sends one
    unsigned HEAD of the bucket: any HTTP answer (200, 403, 404) or a read timeout proves the
    endpoint is reachable; a connection failure raises `StorageConnectionError`. Anything else
    is left to the real request, which reports it.
    """
    if getattr(fs, "_gfpipe_reachable", False):
        return
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - s3fs always brings botocore
        return
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", PROBE_CONNECT_TIMEOUT)
    config.setdefault("read_timeout", PROBE_READ_TIMEOUT)
    config.setdefault("retries", {"total_max_attempts": 1})
    # Unsigned: reachability needs no credentials, and a missing endpoint is the first thing to
    # report (credentials are checked by the real request).
    probe_options = {**options, "config_kwargs": copy.deepcopy(config), "asynchronous": False, "anon": True}
    for name in ("skip_instance_cache", "loop"):
        probe_options.pop(name, None)
    bucket = _bucket(uri)
    timer: threading.Timer | None = None
    probe = None
    try:
        probe = type(fs)(**probe_options, skip_instance_cache=True)
        probe.retries = retries or 1
        probe.connect()
        endpoint = _endpoint(probe) or "the default AWS endpoint"
        timer = threading.Timer(
            SLOW_CONNECT_LOG_SECONDS,
            log.info,
            (
                "connecting to S3 endpoint %s for %s (no answer yet; connect_timeout %s s)",
                endpoint,
                uri,
                config["connect_timeout"],
            ),
        )
        timer.daemon = True
        timer.start()
        if bucket:
            probe.call_s3("head_bucket", Bucket=bucket)
        else:
            probe.call_s3("list_buckets")
    except BotoConnectionError as exc:  # refused, DNS failure, connect timeout, proxy
        raise storage_error(exc, uri, probe or fs) from exc
    except OSError:
        # s3fs turns HTTP error answers into OSErrors (PermissionError, FileNotFoundError...),
        # and a read timeout means the endpoint accepted the connection: it is reachable.
        pass
    except Exception as exc:  # noqa: BLE001 - e.g. no credentials: the real request reports it
        log.debug("%s: first-contact check inconclusive: %s", uri, exc)
        return
    finally:
        if timer is not None:
            timer.cancel()
    fs._gfpipe_reachable = True


def open_file(
    uri: str, mode: str = "rb", storage_options: Mapping[str, Any] | None = None, **kwargs: Any
) -> StorageFile:
    """Open `uri` as a file object (also a context manager); errors name the URI and the fix.

    Errors when opening and when closing (S3 uploads happen on close) become `StorageError`s;
    errors raised by the caller's own code inside a `with` block pass through untouched.
    Extra keyword arguments (e.g. `block_size`) go to `fs.open`. Writing to a local path
    creates the missing parent folders, as object stores do implicitly.
    """
    fs, path = filesystem(uri, storage_options)
    try:
        if "w" in mode and _is_local(fs):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        handle = fs.open(path, mode, **kwargs)
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise storage_error(exc, uri, fs) from exc
    return StorageFile(handle, uri, fs)


class StorageFile:
    """An fsspec file object that turns a failing close (an upload) into a `StorageError`.

    Everything else is delegated to the wrapped file, so it works wherever a binary file
    object does (tarfile, pyarrow, torch.load, Pillow).
    """

    def __init__(self, handle: Any, uri: str, fs: Any) -> None:
        self._handle = handle
        self.uri = uri
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._handle)

    def close(self) -> None:
        try:
            self._handle.close()
        except Exception as exc:  # noqa: BLE001 - translated, re-raised
            raise storage_error(exc, self.uri, self._fs) from exc

    def __enter__(self) -> StorageFile:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and "w" in str(getattr(self._handle, "mode", "")) and not _is_local(self._fs):
            with contextlib.suppress(Exception):
                self._handle.discard()  # never upload half a file because the writer failed
                self._handle.closed = True
            return
        self.close()


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole content of `uri` (for small files: images, checkpoints, manifests)."""
    with open_file(uri, "rb", storage_options) as fh:
        return fh.read()


def write_bytes(uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write `data` to `uri`, replacing it."""
    with open_file(uri, "wb", storage_options) as fh:
        fh.write(data)


def ensure_writable(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Check up front that the folder `uri` can be written, before hours of work go into it.

    Local: creates the folder, writes and removes a probe file. S3 (and other stores): puts and
    deletes a small probe object under the prefix, which also proves the bucket exists. Raises
    the translated `StorageError` (permission, missing bucket, a path that is an existing file,
    unreachable endpoint). The probe's name starts with '.', so readers skip it if a delete
    fails halfway.
    """
    fs, path = filesystem(uri, storage_options)
    path = path.rstrip("/")
    probe = f"{path}/.gfpipe-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if path and fs.isfile(path):
            raise StorageError(f"{uri}: is an existing file, not a folder; give a folder URI or move the file away")
        if _is_local(fs):
            fs.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"gfpipe write probe\n")
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise storage_error(exc, uri, fs) from exc
    try:
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise StorageError(
            f"{uri}: can write but not delete (probe {to_uri(fs, probe, uri)}: {_short(str(exc))}); "
            "gfpipe removes stale and replaced files, so it needs delete permission too"
        ) from exc
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)


def to_json_value(obj: Any) -> Any:
    """`obj` as plain JSON-safe Python: numpy scalars/arrays (and anything with `.tolist()`,
    such as tensors) become numbers and lists, tuples/sets lists, paths/enums/dates their text,
    dataclasses dicts; inf/-inf become the strings "inf"/"-inf" and NaN None, so the result
    passes `json.dumps(..., allow_nan=False)`. Anything else is a TypeError naming where it is.
    """
    return _to_json(obj, "value")


def _to_json(obj: Any, _where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return float(obj)
    if isinstance(obj, Mapping):
        return {_json_key(k, _where): _to_json(v, f"{_where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [_to_json(v, f"{_where} item") for v in obj]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    if isinstance(obj, enum.Enum):
        return _to_json(obj.value, _where)
    if isinstance(obj, (pathlib.PurePath,)):
        return str(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_json(dataclasses.asdict(obj), _where)
    if isinstance(obj, (bytes, bytearray)):
        raise TypeError(f"{_where} is {len(obj)} bytes, which JSON cannot hold; store it elsewhere or encode it")
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():  # numpy/torch scalars
        return _to_json(item(), _where)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):  # numpy arrays, tensors (on CPU)
        return _to_json(tolist(), _where)
    if hasattr(obj, "__index__"):
        return int(obj.__index__())
    if hasattr(obj, "__float__"):
        return _to_json(float(obj), _where)
    raise TypeError(f"{_where} of type {type(obj).__name__} cannot be written as JSON; convert it first")


def _json_key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return key
    value = _to_json(key, f"{where} key")
    if isinstance(value, (dict, list)):
        raise TypeError(f"{where} has a key of type {type(key).__name__}; JSON keys must be text or numbers")
    return value if isinstance(value, str) else json.dumps(value)


def dumps_json(obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """Strict JSON text of `obj` after `to_json_value` (never NaN/Infinity tokens)."""
    return json.dumps(to_json_value(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(uri: str, obj: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write `obj` to `uri` as strict, indented JSON (see `to_json_value`) through this layer."""
    write_bytes(uri, (dumps_json(obj, indent=2) + "\n").encode("utf-8"), storage_options)


def join_uri(base: str, *parts: str) -> str:
    """`base` + `/part/...`, keeping the scheme of `base` (URIs are always '/'-separated)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def to_uri(fs: Any, path: str, like: str) -> str:
    """A path from `fs` as a URI in the same style as `like` (scheme kept, or a plain path)."""
    protocol, _ = split_protocol(like)
    if protocol is None:
        return path
    if _is_local(fs):
        return f"{protocol}://{path}"
    return f"{protocol}://{path.lstrip('/')}"


def expand_braces(pattern: str) -> list[str]:
    """Expand WebDataset brace patterns: `a-{000..002}.tar` and `{train,val}/x.tar`.

    Numeric ranges keep zero padding (`{0000..0099}` gives 0000 .. 0099); several groups
    expand as a product, left to right. Nested braces are not supported.
    """
    pieces: list[list[str]] = []
    pos = 0
    for match in _BRACE.finditer(pattern):
        pieces.append([pattern[pos : match.start()]])
        pieces.append(_expand_group(match.group(1), pattern))
        pos = match.end()
    pieces.append([pattern[pos:]])
    expanded = ["".join(combo) for combo in itertools.product(*pieces)]
    if any("{" in p or "}" in p for p in expanded):
        raise ValueError(f"{pattern}: unbalanced or nested braces; use {{a..b}} or {{x,y}} groups")
    return expanded


def _expand_group(body: str, pattern: str) -> list[str]:
    match = _RANGE.match(body)
    if match:
        lo_s, hi_s = match.groups()
        lo, hi = int(lo_s), int(hi_s)
        width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
        step = 1 if hi >= lo else -1
        return [str(i).zfill(width) for i in range(lo, hi + step, step)]
    if "," in body:
        return body.split(",")
    raise ValueError(f"{pattern}: brace group {{{body}}} is neither a range a..b nor a list x,y")


def list_shards(pattern: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """All files matched by `pattern`, sorted, as URIs in the style of `pattern`.

    `pattern` is a file, a folder or key prefix (listed recursively), a glob (`s3://b/*.tar`),
    or a WebDataset brace pattern (`s3://b/shard-{0000..0099}.tar`, every expanded file must
    exist). Files and folders whose name starts with '.' or '_' (done markers, manifests) are
    skipped. Raises `NoShardsError` when nothing matches.
    """
    fs, _ = filesystem(pattern, storage_options)
    try:
        if _BRACE.search(pattern):
            paths = _list_braced(fs, pattern, storage_options)
        else:
            _, path = filesystem(pattern, storage_options)
            paths = _list_one(fs, path)
    except (StorageError, ValueError):
        raise
    except Exception as exc:  # noqa: BLE001 - translated, re-raised
        raise storage_error(exc, pattern, fs) from exc
    base = _static_prefix(filesystem(pattern, storage_options)[1])
    paths = sorted({p for p in paths if not _hidden(p, base)})
    if not paths:
        raise NoShardsError(_nothing_matched(fs, pattern, storage_options))
    return [to_uri(fs, p, pattern) for p in paths]


def _list_one(fs: Any, path: str) -> list[str]:
    fs.invalidate_cache()
    if _GLOB_CHARS.search(path):
        found = fs.glob(path, detail=True)
        files = [p for p, info in found.items() if info.get("type") == "file"]
        # A glob that matches folders means "everything under them".
        for p, info in found.items():
            if info.get("type") == "directory":
                files.extend(fs.find(p))
        return files
    stripped = path.rstrip("/")
    if fs.isfile(stripped):
        return [stripped]
    if fs.isdir(stripped):
        return list(fs.find(stripped))
    # A key prefix that is not a folder, e.g. s3://bucket/data/train- .
    parent = posixpath.dirname(stripped)
    if parent and fs.isdir(parent):
        return [p for p in fs.find(parent) if p.startswith(stripped)]
    return []


def _list_braced(fs: Any, pattern: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    expanded = expand_braces(pattern)
    paths: list[str] = []
    literal: list[str] = []
    for uri in expanded:
        _, path = filesystem(uri, storage_options)
        if _GLOB_CHARS.search(path):
            paths.extend(_list_one(fs, path))
        else:
            literal.append(path)
    if literal:
        fs.invalidate_cache()
        existing: set[str] = set()
        for parent in sorted({posixpath.dirname(p) for p in literal}):
            with contextlib.suppress(FileNotFoundError):
                existing.update(p.rstrip("/") for p in fs.ls(parent, detail=False))
        missing = [p for p in literal if p not in existing]
        if missing and len(missing) < len(literal):
            shown = ", ".join(to_uri(fs, p, pattern) for p in missing[:3])
            raise StorageNotFoundError(
                f"{pattern}: {len(missing)} of {len(literal)} shards do not exist ({shown}"
                f"{', ...' if len(missing) > 3 else ''}); fix the range, or use a glob or a "
                "prefix to read the shards that are there"
            )
        paths.extend(p for p in literal if p in existing)
    return paths


def _static_prefix(path: str) -> str:
    """The part of a listing pattern before its first glob or brace character."""
    cut = re.search(r"[*?\[{]", path)
    return path[: cut.start()] if cut else path


def _hidden(path: str, base: str) -> bool:
    """True when a file or a folder below the listing root starts with '.' or '_'."""
    if path.rstrip("/") == base.rstrip("/"):
        return False  # a file named explicitly is read whatever its name
    rest = path[len(base) :] if path.startswith(base) else posixpath.basename(path)
    parts = [p for p in rest.split("/") if p]
    if path.startswith(base) and not base.endswith("/") and parts and not rest.startswith("/"):
        parts = parts[1:]  # the root's own (partial) name is the user's choice, not hidden
    return any(p.startswith((".", "_")) for p in parts) or posixpath.basename(path).startswith((".", "_"))


def _nothing_matched(fs: Any, pattern: str, storage_options: Mapping[str, Any] | None) -> str:
    """The message for an empty listing, naming a missing bucket when that is the cause."""
    protocol, _ = split_protocol(pattern)
    if protocol in ("s3", "s3a"):
        _, path = filesystem(pattern, storage_options)
        bucket = path.split("/", 1)[0]
        try:
            fs.ls(bucket, detail=False)
        except Exception as exc:  # noqa: BLE001 - turned into the message
            return str(storage_error(exc, pattern, fs))
    return (
        f"{pattern}: no files matched; check the path, the glob or brace pattern, and that "
        "the files exist (names starting with '.' or '_' are skipped)"
    )


def storage_error(exc: BaseException, uri: str, fs: Any = None) -> StorageError:
    """Translate a filesystem exception into a `StorageError` that names `uri` and the fix."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc)
    chain = f"{text} {exc.__cause__!r}"
    name = type(exc).__name__
    endpoint = _endpoint(fs)
    where = f" at {endpoint}" if endpoint else ""
    if "NoSuchBucket" in chain or "bucket does not exist" in chain:
        bucket = _bucket(uri)
        return StorageNotFoundError(
            f"{uri}: bucket {bucket!r} does not exist{where}; create it or fix the URI "
            "(and endpoint_url, for S3-compatible stores)"
        )
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in chain:
        return StoragePermissionError(
            f"{uri}: no credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or "
            'AWS_PROFILE), or give the storage options {"key": ..., "secret": ...} '
            '(--storage-options on the command line), or {"anon": true} for a public bucket'
        )
    if isinstance(exc, PermissionError) and fs is not None and _is_local(fs):
        return StoragePermissionError(
            f"{uri}: permission denied ({_short(text)}); choose a location you may write, "
            "or fix the folder's permissions"
        )
    if isinstance(exc, PermissionError) or any(
        code in chain
        for code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "Forbidden",
            "ExpiredToken",
        )
    ):
        code = _error_code(exc)
        detail = f"{code}: {text}" if code and code not in text else text
        return StoragePermissionError(
            f"{uri}: access denied{where} ({_short(detail)}); check the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the storage options key/secret) "
            "and that they may read/write this bucket"
        )
    if name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
    ) or isinstance(exc, (ConnectionError, TimeoutError)):
        return StorageConnectionError(
            f"{uri}: cannot reach the storage endpoint{where or ''} ({_short(text)}); check "
            "the endpoint (--endpoint-url, storage option endpoint_url or AWS_ENDPOINT_URL) and the network"
        )
    if isinstance(exc, FileNotFoundError):
        return StorageNotFoundError(f"{uri}: not found; check the path (and the bucket/endpoint)")
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return StorageError(
            f"{uri}: part of this path is an existing file, not a folder ({_short(text)}); "
            "choose another location or move the file away"
        )
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{uri}: is a folder, not a file; give a file URI")
    return StorageError(f"{uri}: {name}: {_short(text)}")


def _normalise_options(protocol: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    # botocore rewrites a config_kwargs["retries"] dict in place; copies keep the caller's
    # options (and fsspec's instance-cache token for them) unchanged between calls.
    opts = {k: copy.deepcopy(v) if isinstance(v, (dict, list)) else v for k, v in (options or {}).items()}
    if protocol in ("s3", "s3a") and "endpoint_url" in opts:
        import inspect

        import s3fs

        if "endpoint_url" not in inspect.signature(s3fs.S3FileSystem.__init__).parameters:
            client = dict(opts.pop("client_kwargs", None) or {})
            client.setdefault("endpoint_url", opts.pop("endpoint_url"))
            opts["client_kwargs"] = client
    return opts


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _endpoint(fs: Any) -> str | None:
    if fs is None:
        return None
    endpoint = getattr(fs, "endpoint_url", None) or (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
    if not endpoint:  # from AWS_ENDPOINT_URL or the AWS default: the client knows
        client = getattr(fs, "_s3", None)
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return endpoint


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code (InvalidAccessKeyId, AccessDenied...) behind an s3fs exception."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
    return None


def _bucket(uri: str) -> str:
    _, path = split_protocol(uri)
    return path.split("/", 1)[0]


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
