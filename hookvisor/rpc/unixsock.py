"""Unix socket paths longer than sun_path (108 bytes) work through /proc/self/fd.

A run dir under a deep temporary directory easily passes the limit; binding or
connecting through an O_PATH descriptor of the directory keeps the address short
while the socket file lands where it was asked.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

_SUN_PATH_MAX = 107


@contextlib.contextmanager
def short_address(path: Path) -> Iterator[str]:
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _socket_at(path: Path, use: Callable[[socket.socket, str], None]) -> socket.socket:
    """A Unix stream socket that `use` connects or binds to `path`'s short address; closed,
    not leaked, when that fails."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_address(path) as address:
            use(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(path: Path, timeout: float | None) -> socket.socket:
    def use(sock: socket.socket, address: str) -> None:
        sock.settimeout(timeout)
        sock.connect(address)

    return _socket_at(path, use)


def bind(path: Path) -> socket.socket:
    return _socket_at(path, socket.socket.bind)
