"""The fast tar listing agrees with tarfile wherever it answers, and hands everything else over."""

from __future__ import annotations

import io
import tarfile

import pytest

from gfpipe.data.shards import _index_tar
from gfpipe.data.tar_headers import list_plain_tar

SIZES = (0, 1, 511, 512, 513, 1500)  # around the 512-byte block rounding


def make_tar(names_and_sizes, fmt=tarfile.USTAR_FORMAT, extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, size in names_and_sizes:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(range(256)) * (size // 256 + 1)))
        for info in extra or ():
            tar.addfile(info)
    return buf.getvalue()


def tarfile_listing(data: bytes) -> list[tuple[str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


def fast_listing(data: bytes):
    members = list_plain_tar(io.BytesIO(data), len(data))
    return None if members is None else [(m.name, m.offset_data, m.size) for m in members]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_tars_list_exactly_as_tarfile_does(fmt):
    names = [(f"{i:06d}.{ext}", size) for i, size in enumerate(SIZES) for ext in ("png", "cls")]
    folder = tarfile.TarInfo("a/folder")
    folder.type = tarfile.DIRTYPE
    link = tarfile.TarInfo("000000.lnk")
    link.type, link.linkname = tarfile.SYMTYPE, "000000.png"
    data = make_tar(names, fmt, extra=[folder, link])
    assert fast_listing(data) == tarfile_listing(data)
    assert len(fast_listing(data)) == len(names)


def test_listing_reads_headers_across_its_read_windows():
    """Headers are read through 64 KiB windows: a tar of ~1.3 MB whose headers fall at every
    offset modulo the window (small members), and members larger than a window, lists exactly as
    tarfile does (a window that served a stale or shifted block would misplace every member)."""
    sizes = [(i * 37) % 3000 for i in range(400)] + [70_000, 3, 200_000, 65_536 - 512, 65_536, 1]
    names = [(f"{i:06d}.png", size) for i, size in enumerate(sizes)]
    data = make_tar(names)
    assert len(data) >= 20 * 65_536
    assert fast_listing(data) == tarfile_listing(data)
    assert len(fast_listing(data)) == len(names)


def test_ustar_prefix_field_joins_the_leading_folders():
    """A POSIX ustar name over 100 bytes is split into prefix/name (a swapped join would differ)."""
    name = "d" * 90 + "/" + "e" * 40 + "/sample.png"
    data = make_tar([(name, 700)], tarfile.USTAR_FORMAT)
    assert fast_listing(data) == tarfile_listing(data) == [(name, 512, 700)]


def test_non_ascii_names_decode_like_tarfile():
    data = make_tar([("bilder/straße-ø.png", 10)], tarfile.USTAR_FORMAT)
    assert fast_listing(data) == tarfile_listing(data)


def test_an_empty_archive_has_no_members():
    assert fast_listing(make_tar([])) == []


@pytest.mark.parametrize(
    "fmt, name",
    [
        (tarfile.GNU_FORMAT, "x" * 150 + ".png"),  # a GNU long-name header
        (tarfile.PAX_FORMAT, "y" * 150 + ".png"),  # a pax extended header
    ],
)
def test_long_names_fall_back_to_tarfile_with_the_same_index(fmt, name):
    data = make_tar([(name, 100), ("short.png", 5)], fmt)
    assert fast_listing(data) is None
    samples, problem = _index_tar(io.BytesIO(data))
    assert problem is None
    assert [(m.name, m.offset_data, m.size) for parts in samples.values() for m in parts.values()] == (
        tarfile_listing(data)
    )


def test_broken_tars_fall_back_and_keep_tarfiles_problems():
    data = make_tar([("000000.png", 2000), ("000001.png", 2000)])
    cut_in_data = data[:1200]
    cut_in_header = data[: 512 + 2048 + 100]
    bad_checksum = bytearray(data)
    bad_checksum[512 + 2048 + 10] ^= 0xFF  # a byte of the second header's name
    for broken in (cut_in_data, cut_in_header, bytes(bad_checksum)):
        assert fast_listing(broken) is None
    samples, problem = _index_tar(io.BytesIO(cut_in_data))
    assert not samples and problem == "truncated tar (member 000000.png cut short)"
    samples, problem = _index_tar(io.BytesIO(cut_in_header))  # tarfile alone ends quietly here
    assert list(samples) == ["000000"] and problem == "truncated or corrupt tar (unreadable header at byte 2560)"
    samples, problem = _index_tar(io.BytesIO(bytes(bad_checksum)))  # and at a bad header after the first
    assert list(samples) == ["000000"] and problem == "truncated or corrupt tar (unreadable header at byte 2560)"


def test_a_second_archive_appended_to_the_first_is_reported_not_dropped():
    """`cat a.tar b.tar`: tarfile stops at a's end-of-archive blocks; b's samples would vanish."""
    first, second = make_tar([("000000.png", 10)]), make_tar([("000001.png", 10)])
    samples, problem = _index_tar(io.BytesIO(first + second))
    assert list(samples) == ["000000"] and problem and problem.startswith("truncated or corrupt tar")
    samples, problem = _index_tar(io.BytesIO(first + bytes(4096)))  # more zero padding is fine
    assert list(samples) == ["000000"] and problem is None
