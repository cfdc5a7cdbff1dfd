"""A client that never pauses between requests cannot keep a worker to itself.

A worker serves a connection's requests while they come at once (pipelined,
or the next within a couple of milliseconds): a client calling in a tight
loop, or pipelining, kept its worker for as long as it went on, and with
`workers` such clients every other client waited for them to stop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from hookvisor.config import Settings
from hookvisor.rpc import unixsock
from hookvisor.rpc.server import AgentServer
from hookvisor.rpc.wire import status

REQUEST = (b"POST /RPC2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s")
BODY = b"<?xml version='1.0'?><methodCall><methodName>%s</methodName><params/></methodCall>"
HOG_CALLS = 2000


def request(method: bytes) -> bytes:
    body = BODY % method
    return REQUEST % (len(body), body)


def test_a_pipelining_client_does_not_keep_the_only_worker(tmp_path: Path) -> None:
    order: list[str] = []
    first = threading.Event()
    release = threading.Event()

    def dispatch(method: str, _params: tuple[Any, ...]) -> dict[str, Any]:
        order.append(method)
        if method == "hog" and not first.is_set():
            first.set()
            release.wait(30)
        return status(0, "Done")

    settings = Settings(listen="", unix_socket=tmp_path / "s.sock", run_dir=tmp_path,
                        workers=1)
    server = AgentServer(settings, dispatch)
    server.start()
    hog = unixsock.connect(tmp_path / "s.sock", 30)
    other = None
    drained = threading.Event()

    def pipeline() -> None:
        # Closed at the end of the test, maybe before the server read it all.
        with contextlib.suppress(OSError):
            hog.sendall(request(b"hog") * HOG_CALLS)

    def drain() -> None:
        try:
            while hog.recv(1 << 16):
                pass
        except OSError:
            pass  # closed at the end of the test
        drained.set()

    try:
        hog.sendall(request(b"hog"))
        assert first.wait(30)
        # The worker is busy with the hog's first call; its next ones are queued up.
        sender = threading.Thread(target=pipeline, daemon=True)
        sender.start()
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        other = unixsock.connect(tmp_path / "s.sock", 30)
        other.sendall(request(b"other"))
        deadline = time.monotonic() + 30
        while server._busy < 2 and time.monotonic() < deadline:  # the other's is queued
            time.sleep(0.01)
        release.set()
        reply = other.recv(4096)
        assert b"200 OK" in reply
        position = order.index("other")
        assert position < 200, f"served after {position} calls of the hog"
    finally:
        release.set()
        hog.close()
        if other is not None:
            other.close()
        server.shutdown(5)
        server._close_listeners()
