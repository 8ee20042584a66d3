"""A fast listing of a plain tar's regular files, headers only, or None where tarfile must do it.

Every read task lists its WebDataset tar before reading it, and the driver lists every local tar
to count images. `tarfile` builds a full `TarInfo` per member (about 15 us each here, 24 ms for
a 500-image shard of 1500 members); this reads the 512-byte headers of the common case, ustar or
v7 headers of regular files and directories, about 4x faster. Headers are taken from 64 KiB
windows of the file, so a tar of small members costs one read per window, not one per member
(through gfpipe's wrapped fsspec files, reads per member were a quarter of the listing's time:
128 shards of 500 images, 1.31 -> 0.95 s). It returns None at the first thing it does not handle
exactly as tarfile would: pax or GNU long-name headers, base-256 numbers, sparse files, a bad
checksum, a header or member cut short, data after the end blocks. The caller then lists the
whole file with tarfile, so odd and broken tars get tarfile's own behaviour and messages.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20
_WINDOW = 64 << 10  # bytes read at a time while walking the headers
_REGULAR = (b"0", b"\0", b"7")  # tarfile.REGULAR_TYPES without GNU sparse
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, FIFOs: no data


@dataclasses.dataclass(frozen=True)
class TarMember:
    """What the reader needs of a member: its name and where its bytes are (like tarfile.TarInfo)."""

    name: str
    offset_data: int
    size: int


def list_plain_tar(fh: BinaryIO, file_size: int) -> list[TarMember] | None:
    """Regular-file members of the tar in `fh` (seekable, `file_size` bytes), in file order.

    None when the tar holds anything this does not handle (see the module doc); an empty list for
    an empty archive (end-of-archive block first).
    """
    members: list[TarMember] = []
    headers = _Window(fh, file_size)
    offset = 0
    while offset < file_size:
        header = headers.block(offset)
        if header == _ZERO_BLOCK:  # the end, unless something follows (a second archive appended)
            return None if has_data_from(fh, offset, file_size) else members
        if len(header) < _BLOCK or not _checksum_ok(header):
            return None
        kind = header[156:157]
        size = _octal(header[124:136])
        if size is None:
            return None
        data = offset + _BLOCK
        if kind in _REGULAR:
            name = _name(header)
            if name.endswith("/"):  # tarfile reads an old-style regular entry ending in / as a folder
                if size:
                    return None
            else:
                if data + size > file_size:
                    return None
                members.append(TarMember(name, data, size))
        elif kind not in _SKIPPED or size:
            return None
        offset = data + -(-size // _BLOCK) * _BLOCK
    return members if offset == file_size else None


class _Window:
    """512-byte blocks of a file, read through a window of `_WINDOW` bytes that moves forward."""

    def __init__(self, fh: BinaryIO, file_size: int) -> None:
        self.fh, self.file_size = fh, file_size
        self.start, self.data = 0, b""

    def block(self, offset: int) -> bytes:
        at = offset - self.start
        if at < 0 or at + _BLOCK > len(self.data):
            self.fh.seek(offset)
            self.data = self.fh.read(min(_WINDOW, self.file_size - offset))
            self.start, at = offset, 0
        return self.data[at : at + _BLOCK]


def has_data_from(fh: BinaryIO, offset: int, size: int) -> bool:
    """Whether any byte from `offset` to `size` is not zero (an archive ends in zero blocks)."""
    fh.seek(offset)
    while offset < size:
        chunk = fh.read(min(_CHUNK, size - offset))
        if not chunk:
            return False
        if chunk.strip(b"\0"):
            return True
        offset += len(chunk)
    return False


def _octal(field: bytes) -> int | None:
    """A NUL- or space-terminated octal number, as tarfile.nti reads it; None for base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        return None
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    unsigned = 256 + sum(header) - sum(header[148:156])  # the checksum field counts as 8 spaces
    return stored == unsigned


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:265] == b"ustar\x0000":  # POSIX ustar: a prefix field holds the leading folders
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")
