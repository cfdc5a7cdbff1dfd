"""The files a disk image makes QEMU open: its backing chain, read from the headers.

A qcow2 image names its backing file, and may name an external data file, in
its header; libvirt follows the chain and QEMU (root on the host) opens every
file in it. So a client naming an image inside `storage_dirs` may still reach
any file on the host through the image's header, and a guest can write such a
header into a raw disk of its own and have a second VM open it as qcow2. The
policy therefore reads the chain the way libvirt will and holds each file in it
to the same rule as the file the client named.

Only raw and qcow2 are taken from a client: the other formats QEMU knows (vmdk
descriptors with extents, qed, vhdx, ...) name files in ways not checked here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

ALLOWED_FORMATS = ("raw", "qcow2")
# libvirt's format names that mean plain bytes.
RAW_FORMATS = frozenset({"raw", "iso"})

QCOW2_MAGIC = b"QFI\xfb"
_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_MAX_DEPTH = 16  # libvirt's own limit on a backing chain is deeper; none is this long
_MAX_NAME = 4096
_MAX_HEADER = 64 * 1024

# (path) -> None if the file may be opened, else why not.
PathCheck = Callable[[str], "str | None"]


class ImageError(Exception):
    """An image that cannot be taken; the message says which file and why."""


def _read_at(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ImageError("header is cut short")
    return data


def _qcow2_refs(fd: int) -> tuple[str | None, str | None, str | None]:
    """(backing file, its format, external data file) from a qcow2 header."""
    head = _read_at(fd, 0, 72)
    version = struct.unpack(">I", head[4:8])[0]
    backing_offset, backing_size = struct.unpack(">QI", head[8:20])
    backing = backing_format = data_file = None
    if backing_offset:
        if backing_size == 0 or backing_size > _MAX_NAME:
            raise ImageError(f"backing file name of {backing_size} bytes")
        backing = _read_at(fd, backing_offset, backing_size).decode("utf-8", "replace")
    if version >= 3:
        header_length = struct.unpack(">I", _read_at(fd, 100, 4))[0]
        offset = header_length
        limit = min(backing_offset or _MAX_HEADER, _MAX_HEADER)
        while offset + 8 <= limit:
            kind, length = struct.unpack(">II", _read_at(fd, offset, 8))
            if kind == _EXT_END:
                break
            if length > _MAX_NAME * 4:
                raise ImageError(f"header extension of {length} bytes")
            value = _read_at(fd, offset + 8, length)
            if kind == _EXT_BACKING_FORMAT:
                backing_format = value.decode("utf-8", "replace")
            elif kind == _EXT_DATA_FILE:
                data_file = value.decode("utf-8", "replace")
            offset += 8 + (length + 7) // 8 * 8
    return backing, backing_format, data_file


def _is_qcow2(fd: int) -> bool:
    return os.pread(fd, 4, 0) == QCOW2_MAGIC


def _sniff(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return "raw"  # nothing to open: nothing it could name
    try:
        return "qcow2" if _is_qcow2(fd) else "raw"
    except OSError:
        return "raw"
    finally:
        os.close(fd)


def _resolve(name: str, image: str) -> str:
    """A file name from `image`'s header as QEMU resolves it (relative: to the image's dir)."""
    if name.startswith("/"):
        return name
    return os.path.join(os.path.dirname(image), name)


def chain_problem(path: str, fmt: str | None, check: PathCheck) -> str | None:
    """Why the image `path` of format `fmt` may not be opened for a client, or None.

    `fmt` None: not given, libvirt probes it (qcow2 if the header says so).

    `check` is the policy's rule for one file (inside storage_dirs). A file not
    there (yet) has no chain to follow: libvirt fails the start, or a hook makes it.
    """
    if fmt is None:
        fmt = _sniff(path)
    if fmt not in ALLOWED_FORMATS and fmt not in RAW_FORMATS:
        return (f"format {fmt!r} can name other host files (not checked): a client's disk "
                "is raw or qcow2")
    seen: set[str] = set()
    current, current_fmt = path, fmt
    for _ in range(_MAX_DEPTH):
        if current_fmt in RAW_FORMATS:
            return None
        real = os.path.realpath(current)
        if real in seen:
            return f"{current}: backing chain loops"
        seen.add(real)
        try:
            fd = os.open(current, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"{current}: cannot read its header: {e.strerror}"
        try:
            if not _is_qcow2(fd):
                return f"{current}: not a qcow2 image (give its format)"
            backing, backing_fmt, data_file = _qcow2_refs(fd)
        except (ImageError, OSError) as e:
            return f"{current}: unreadable qcow2 header: {e}"
        finally:
            os.close(fd)
        if data_file is not None:
            problem = _name_problem(data_file, current, "data file", check)
            if problem:
                return problem
        if backing is None:
            return None
        problem = _name_problem(backing, current, "backing file", check)
        if problem:
            return problem
        nxt = _resolve(backing, current)
        if backing_fmt is None:
            # libvirt probes then; what it would find is what the header says.
            backing_fmt = _sniff(nxt)
        if backing_fmt not in ALLOWED_FORMATS and backing_fmt not in RAW_FORMATS:
            return f"{current}: backing file format {backing_fmt!r} (not checked)"
        current, current_fmt = nxt, backing_fmt
    return f"{path}: backing chain deeper than {_MAX_DEPTH}"


def _name_problem(name: str, image: str, what: str, check: PathCheck) -> str | None:
    # A colon before any slash is a protocol to QEMU and libvirt (json:{...},
    # nbd:, file:/etc/shadow, http://): they open what it says, not a file here.
    colon, slash = name.find(":"), name.find("/")
    if (colon >= 0 and (slash < 0 or colon < slash)) or "\0" in name or not name:
        return f"{image}: {what} {name[:120]!r} is not a plain file"
    problem = check(_resolve(name, image))
    return f"{image}: {what} {problem}" if problem else None
