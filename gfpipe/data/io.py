"""Storage access through fsspec: local paths, `file://`, `s3://` and any installed protocol.

Everything in gfpipe that opens, lists or writes a URI goes through this module, so one set of
rules holds everywhere: credentials and endpoint come from the standard AWS environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ~/.aws/...) plus explicit `storage_options`
(`{"endpoint_url": ...}` for an S3-compatible store), and storage failures become
`StorageError`s that name the URI and say what to do instead of a bare botocore traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import posixpath
import re
from typing import Any, Iterator, Mapping

import fsspec
from fsspec.core import split_protocol

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


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

    `storage_options` go to the filesystem constructor; for S3 a top-level `endpoint_url` is
    accepted (and moved under `client_kwargs` for s3fs versions that lack the argument).
    """
    protocol, _ = split_protocol(uri)
    options = _normalise_options(protocol, storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"{uri}: no filesystem for protocol {protocol!r} ({exc}); install the fsspec "
            "implementation for it (s3fs for s3://) or fix the URI"
        ) from exc
    return fs, path


def open_file(
    uri: str, mode: str = "rb", storage_options: Mapping[str, Any] | None = None, **kwargs: Any
) -> "StorageFile":
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

    def __enter__(self) -> "StorageFile":
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
            "AWS_PROFILE), pass storage_options={'key': ..., 'secret': ...}, or "
            "storage_options={'anon': True} for a public bucket"
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
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or storage_options key/secret) "
            "and that they may read/write this bucket"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError") or isinstance(
        exc, (ConnectionError, TimeoutError)
    ):
        return StorageConnectionError(
            f"{uri}: cannot reach the storage endpoint{where or ''} ({_short(text)}); check "
            "endpoint_url (storage_options or AWS_ENDPOINT_URL) and the network"
        )
    if isinstance(exc, FileNotFoundError):
        return StorageNotFoundError(f"{uri}: not found; check the path (and the bucket/endpoint)")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{uri}: is a folder, not a file; give a file URI")
    return StorageError(f"{uri}: {name}: {_short(text)}")


def _normalise_options(protocol: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
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
    endpoint = getattr(fs, "endpoint_url", None) or (getattr(fs, "client_kwargs", None) or {}).get(
        "endpoint_url"
    )
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


def add_storage_arguments(parser: Any) -> None:
    """`--endpoint-url` and `--storage-options`, shared by every command that touches storage."""
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    parser.add_argument(
        "--storage-options",
        default=None,
        help='JSON object of fsspec storage options, e.g. \'{"anon": true}\'',
    )


def storage_options_from_args(args: Any) -> dict[str, Any] | None:
    """The storage options that `add_storage_arguments` collected (None when none were given)."""
    import json

    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--storage-options is not valid JSON ({exc}); e.g. '{{\"anon\": true}}'") from None
    if not isinstance(options, dict):
        raise ValueError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    if args.endpoint_url:
        options["endpoint_url"] = args.endpoint_url
    return options or None
