"""The agent's HTTP/1.1 server: mutual TLS on TCP, peer-checked Unix socket.

Who may connect (SPEC §4 "Transport and trust"):
- TCP with TLS: a client certificate signed by the CA the host trusts, checked
  at the handshake (no certificate or a foreign CA: the handshake fails).
- TCP plain: only when `insecure` is set, with a warning at start.
- Unix socket: the peer's SO_PEERCRED uid must be root, the agent's own user,
  or a user whose groups include `api_group`; never the hook user.

How connections are held (none can pin the agent):
- one selector thread owns listeners, TLS handshakes (non-blocking) and idle
  keep-alive connections: an idle connection costs a file descriptor, no thread;
- a request whose first bytes arrive goes to a bounded pool of `workers`
  threads, which read it whole within `read_timeout`, dispatch it, write the
  reply within `read_timeout`, and hand the connection back;
- idle connections are closed after `idle_timeout`, handshakes after
  `read_timeout`; beyond `max_connections` a new one is closed at once.
- a body over `max_request_bytes` is answered 413 without being read.
"""

from __future__ import annotations

import collections
import contextlib
import grp
import logging
import os
import pwd
import queue
import select
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hookvisor.config import Settings
from hookvisor.errors import Code
from hookvisor.rpc import unixsock
from hookvisor.rpc.wire import Limits, RequestError, marshal_reply, parse_request, status

log = logging.getLogger("hookvisor.rpc.server")

MAX_HEAD = 16 * 1024  # request line plus headers
_RPC_PATHS = (b"/", b"/RPC2")
# After an error answer, what the client still sends is discarded (never kept)
# up to this much and this long, so that a client which overshot a little
# reads the answer rather than a reset; a 100 MB sender gets the reset.
_LINGER_BYTES = 16 * 1024 * 1024
_LINGER_SECONDS = 2.0
_CHUNK = 256 * 1024
_NEXT_WAIT_MS = 2
# Requests one worker serves on a connection in a row before it goes to the
# back of the queue: a client pipelining or calling in a tight loop must not
# keep a worker from the others for as long as it goes on.
_BATCH = 32
# A socket timeout this close to what a deadline leaves is kept as it is (see
# AgentServer._timeout): a call may end this much past its deadline, no more.
_TIMEOUT_SLACK = 0.01


class HttpError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Closed(Exception):
    """The peer closed the connection between requests: nothing to answer."""


@dataclass
class _Conn:
    sock: socket.socket
    kind: str  # tls | tcp | unix
    peer: str
    since: float
    handshaking: bool = False
    # A local peer refused by its credentials: it was sent 403 and the reason, and
    # what it sends is read and dropped by the selector until it goes (no worker).
    refused: str | None = None
    buf: bytearray = field(default_factory=bytearray)
    # The socket's timeout as last set (0.0: non-blocking, as the selector keeps it).
    timeout: float = 0.0


Dispatch = Callable[[str, tuple[Any, ...]], dict[str, Any]]


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def server_tls_context(settings: Settings) -> ssl.SSLContext:
    """Mutual TLS: our host certificate, and the CA a client's certificate must chain to."""
    ca, cert, key = settings.pki_paths()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"TLS: cannot load the PKI (CA {ca}, certificate {cert}, key {key}): "
                         f"{e}; create one with `hookvisor pki init --dir {settings.pki_dir}`, "
                         "or set insecure (plain TCP)") from None
    return ctx


class PeerPolicy:
    """Who may talk to the agent over its Unix socket, from SO_PEERCRED."""

    def __init__(self, api_group: str, hook_user: str) -> None:
        self.api_group = api_group
        self.own_uid = os.geteuid()
        try:
            self.gid: int | None = grp.getgrnam(api_group).gr_gid
        except KeyError:
            self.gid = None
        try:
            self.hook_uid: int | None = pwd.getpwnam(hook_user).pw_uid
        except KeyError:
            self.hook_uid = None
        self.hook_user = hook_user

    def refusal(self, uid: int, gid: int = -1) -> str | None:
        """None if `uid` (process gid `gid`) may call the API, else the one-line reason."""
        if uid == 0:
            return None
        if uid == self.hook_uid:
            return f"uid {uid} is the hook user {self.hook_user!r}: hooks may not call the API"
        if uid == self.own_uid:
            return None
        if self.gid is not None:
            if gid == self.gid:  # running as the group (sg, setgid): it may open the socket
                return None
            try:
                user = pwd.getpwuid(uid)
                if self.gid in os.getgrouplist(user.pw_name, user.pw_gid):
                    return None
            except KeyError:
                pass
        return f"uid {uid} is not root and not in group {self.api_group!r}"


def _error_response(code: int, reason: str) -> bytes:
    # The reason is on the status line too: xmlrpc.client shows only that.
    line = reason.replace("\r", " ").replace("\n", " ")[:300].encode("utf-8", "replace")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s\n" % (code, line, len(line) + 1, line))


class AgentServer:
    """The listeners, the selector thread and the worker pool around `dispatch`."""

    def __init__(self, settings: Settings, dispatch: Dispatch,
                 after_reply: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.dispatch = dispatch
        # Called on the worker once a reply is written (or failed to be): what the
        # dispatcher left for then (its log line) is off the client's wait.
        self.after_reply = after_reply
        self.limits = Limits(settings.max_nesting, settings.max_string_bytes,
                             settings.max_int_digits, settings.max_reply_bytes)
        self.policy = PeerPolicy(settings.api_group, settings.hook_user)
        self.sel = selectors.DefaultSelector()
        self.listeners: list[tuple[socket.socket, str]] = []
        self.tls: ssl.SSLContext | None = None
        self.socket_path: Path | None = None
        self.tcp_address: str | None = None
        self._idle: dict[int, _Conn] = {}
        # Handshaking or refused connections, oldest first (see _admit_unproven).
        self._unproven: dict[int, _Conn] = {}
        self._last_evict_log = 0.0
        self._returned: collections.deque[_Conn] = collections.deque()
        self._work: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._open = 0
        self._busy = 0
        self._stopping = False
        self._last_full_log = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._threads: list[threading.Thread] = []
        try:
            self._listen()
        except BaseException:
            self._close_listeners()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise

    # -- set-up -----------------------------------------------------------------
    def _listen(self) -> None:
        s = self.settings
        if s.listen:
            host, port = parse_listen(s.listen)
            if not s.insecure:
                self.tls = server_tls_context(s)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(512)
            sock.setblocking(False)
            self.listeners.append((sock, "tls" if self.tls else "tcp"))
            bound = sock.getsockname()
            self.tcp_address = (f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6
                                else f"{bound[0]}:{bound[1]}")
            if host in ("0.0.0.0", "::", ""):
                log.warning("listening on every address (%s): any host that can route here "
                            "can reach the API", self.tcp_address)
            if s.insecure:
                log.warning("insecure: plain TCP without TLS on %s: any client that reaches "
                            "%s can run any domain as root", self.tcp_address, self.tcp_address)
        path = s.socket_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                try:
                    unixsock.connect(path, 1.0).close()
                except OSError:
                    path.unlink()  # left by an agent that died
                else:
                    raise OSError(f"another agent is serving on {path}")
        except FileNotFoundError:
            pass
        usock = unixsock.bind(path)
        self.socket_path = path
        self.listeners.append((usock, "unix"))
        gid = self.policy.gid if self.policy.gid is not None else -1
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
        usock.listen(512)
        usock.setblocking(False)

    def start(self) -> None:
        for sock, kind in self.listeners:
            self.sel.register(sock, selectors.EVENT_READ, kind)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        loop = threading.Thread(target=self._loop, name="rpc-loop", daemon=True)
        self._threads.append(loop)
        # Daemon threads: a call stuck past shutdown_timeout must not hold the exit.
        for i in range(max(1, self.settings.workers)):
            self._threads.append(threading.Thread(target=self._worker, name=f"rpc-{i}",
                                                  daemon=True))
        for t in self._threads:
            t.start()

    def describe(self) -> str:
        where = []
        if self.tcp_address:
            where.append(f"{'TLS' if self.tls else 'plain TCP'} {self.tcp_address}")
        where.append(f"socket {self.socket_path}")
        return ", ".join(where)

    # -- stop ---------------------------------------------------------------------
    def shutdown(self, timeout: float) -> bool:
        """Stop accepting, close idle connections, let calls in flight finish.

        True if every call finished within `timeout`.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
        self._wake()
        self._threads[0].join(max(0.0, deadline - time.monotonic()))
        with self._drained:
            while self._busy and time.monotonic() < deadline:
                self._drained.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            finished = self._busy == 0
        # Handed back by a worker after the selector stopped: nobody will wait on them.
        while self._returned:
            self._close(self._returned.popleft())
        for _ in self._threads[1:]:
            self._work.put(None)
        if self.socket_path is not None:
            try:
                if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                    self.socket_path.unlink()
            except OSError:
                pass
        if not finished:
            log.warning("stopping with %d call(s) still running after %.0fs", self._busy,
                        timeout)
        return finished

    def _close_listeners(self) -> None:
        for sock, _kind in self.listeners:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(sock)
            sock.close()

    # -- the selector thread ------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        next_sweep = time.monotonic() + 1.0
        while True:
            with self._lock:
                stopping = self._stopping
            if stopping:
                break
            for key, _mask in self.sel.select(timeout=1.0):
                data = key.data
                if data == "wake":
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                elif isinstance(data, str):
                    self._accept(key.fileobj, data)  # type: ignore[arg-type]
                else:
                    self._ready(data)
            while self._returned:
                self._park(self._returned.popleft())
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + 1.0
        self._close_listeners()
        while self._returned:
            self._close(self._returned.popleft())
        for conn in list(self._idle.values()):
            self._unpark(conn)
            self._close(conn)
        self.sel.unregister(self._wake_r)
        log.debug("selector stopped; idle connections closed")

    def _accept(self, lsock: socket.socket, kind: str) -> None:
        for _ in range(64):  # at most this many per wake-up: others get their turn
            try:
                raw, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, let the loop breathe
                log.warning("accept on %s failed: %s", kind, e)
                return
            with self._lock:
                full = self._open >= self.settings.max_connections
                if not full:
                    self._open += 1
            if full:
                now = time.monotonic()
                if now - self._last_full_log > 5:
                    self._last_full_log = now
                    log.warning("max_connections=%d reached: closing new connections",
                                self.settings.max_connections)
                raw.close()
                continue
            raw.setblocking(False)
            conn = self._new_conn(raw, addr, kind)
            if conn is not None:
                self._park(conn)

    def _new_conn(self, raw: socket.socket, addr: Any, kind: str) -> _Conn | None:
        now = time.monotonic()
        if kind == "unix":
            cred = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", cred)
            conn = _Conn(raw, kind, f"pid {pid} uid {uid}", now)
            conn.refused = self.policy.refusal(uid, gid)
            if conn.refused:
                log.warning("refused local client %s: %s", conn.peer, conn.refused)
                # Answered now, before it even asks; kept open (reading and dropping
                # its request) so that it reads the answer rather than a broken pipe.
                with contextlib.suppress(OSError):
                    raw.send(_error_response(403, f"Forbidden: {conn.refused}"))
                    raw.shutdown(socket.SHUT_WR)
            return conn
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = f"{addr[0]}:{addr[1]}"
        if kind == "tls":
            assert self.tls is not None
            try:
                sock = self.tls.wrap_socket(raw, server_side=True,
                                            do_handshake_on_connect=False)
            except (OSError, ssl.SSLError) as e:
                log.warning("TLS from %s failed: %s", peer, e)
                raw.close()
                self._forget()
                return None
            return _Conn(sock, kind, peer, now, handshaking=True)
        return _Conn(raw, kind, peer, now)

    def _park(self, conn: _Conn) -> None:
        """Wait for the connection's next request (or handshake step) in the selector."""
        with self._lock:
            stopping = self._stopping
        if stopping:
            self._close(conn)
            return
        conn.since = time.monotonic()
        try:
            conn.sock.setblocking(False)
            conn.timeout = 0.0
            self.sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            self._close(conn)
            return
        self._idle[conn.sock.fileno()] = conn
        if conn.handshaking or conn.refused:
            self._admit_unproven(conn)
        if conn.handshaking:
            self._handshake(conn)

    def _admit_unproven(self, conn: _Conn) -> None:
        """Connections not (yet) authenticated take at most half of max_connections.

        Past that the oldest of them goes: a flood of stalled handshakes cannot
        fill the agent's connections and lock out the clients with certificates.
        """
        cap = max(1, self.settings.max_connections // 2)
        while len(self._unproven) >= cap:
            oldest = next(iter(self._unproven.values()))
            now = time.monotonic()
            if now - self._last_evict_log > 5:
                self._last_evict_log = now
                log.warning("%d connections without a certificate or refused: closing the "
                            "oldest (%s) for a new one", cap, oldest.peer)
            self._unpark(oldest)
            self._close(oldest)
        self._unproven[id(conn)] = conn

    def _unpark(self, conn: _Conn) -> None:
        self._unproven.pop(id(conn), None)
        self._idle.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)

    def _ready(self, conn: _Conn) -> None:
        if conn.handshaking:
            self._handshake(conn)
            return
        if conn.refused:
            try:
                if conn.sock.recv(65536):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            self._unpark(conn)
            self._close(conn)
            return
        self._unpark(conn)
        self._hand_over(conn)

    def _hand_over(self, conn: _Conn) -> None:
        with self._lock:
            self._busy += 1
        self._work.put(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(sock, selectors.EVENT_WRITE, conn)
            return
        except ssl.SSLError as e:
            log.warning("TLS handshake refused from %s: %s", conn.peer,
                        e.reason or e.strerror or e)
            self._unpark(conn)
            self._close(conn)
            return
        except OSError as e:
            log.debug("TLS handshake from %s ended: %s", conn.peer, e)
            self._unpark(conn)
            self._close(conn)
            return
        conn.handshaking = False
        self._unproven.pop(id(conn), None)
        conn.since = time.monotonic()
        cert = sock.getpeercert() or {}
        subject = dict(x[0] for x in cert.get("subject", ()))  # type: ignore[misc]
        log.debug("TLS client %s: %s", conn.peer, subject.get("commonName", "?"))
        if sock.pending():
            self._unpark(conn)
            self._hand_over(conn)
        else:
            self.sel.modify(sock, selectors.EVENT_READ, conn)

    def _sweep(self, now: float) -> None:
        s = self.settings
        for conn in list(self._idle.values()):
            limit = s.read_timeout if conn.handshaking or conn.refused else s.idle_timeout
            if now - conn.since > limit:
                log.debug("closing %s connection from %s: %s", conn.kind, conn.peer,
                          "handshake too slow" if conn.handshaking else "idle")
                self._unpark(conn)
                self._close(conn)

    def _forget(self) -> None:
        with self._lock:
            self._open -= 1

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(OSError):
            conn.sock.close()
        self._forget()

    # -- workers ------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            conn = self._work.get()
            if conn is None:
                return
            try:
                keep = self._serve(conn)
            except Exception:  # a bug here must not kill the worker
                log.exception("connection from %s failed", conn.peer)
                keep = False
            if keep == "again":
                self._hand_over(conn)  # to the back of the queue, its data read
            elif keep:
                self._returned.append(conn)
                self._wake()
            else:
                self._close(conn)
            with self._drained:
                self._busy -= 1
                if self._busy == 0:
                    self._drained.notify_all()

    def _serve(self, conn: _Conn) -> bool | str:
        """Serve requests on `conn` while they come at once; True to keep it open,
        "again" to queue it behind the others (more is waiting, its turn is up)."""
        served = 0
        while True:
            try:
                keep = self._one_request(conn)
            except _Closed:
                return False
            except HttpError as e:
                log.info("http %s from %s: %d %s", conn.kind, conn.peer, e.code, e.reason)
                self._answer_error(conn, e)
                return False
            except TimeoutError:
                log.info("%s connection from %s: request not complete within %.0fs; closed",
                         conn.kind, conn.peer, self.settings.read_timeout)
                return False
            except (OSError, ssl.SSLError) as e:
                log.debug("%s connection from %s: %s", conn.kind, conn.peer, e)
                return False
            with self._lock:
                stopping = self._stopping
            if not keep or stopping:
                return False
            pending = isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()
            if not conn.buf and not pending and not self._next_soon(conn):
                return True
            served += 1
            if served >= _BATCH:
                return "again"  # its next request is there: no worker waits on it

    def _next_soon(self, conn: _Conn) -> bool:
        """Whether the client's next request starts within _NEXT_WAIT.

        A client calling in a loop sends its next request right after reading
        the reply: waiting a moment here saves handing the connection to the
        selector and back (two thread switches) per call.
        """
        poller = select.poll()
        poller.register(conn.sock.fileno(), select.POLLIN)
        return bool(poller.poll(_NEXT_WAIT_MS))

    def _recv_into_buf(self, conn: _Conn, deadline: float) -> bool:
        self._timeout(conn, deadline)
        try:
            chunk = conn.sock.recv(_CHUNK)
        except ssl.SSLWantReadError:
            return True
        if not chunk:
            return False
        conn.buf += chunk
        return True

    def _one_request(self, conn: _Conn) -> bool:
        deadline = time.monotonic() + self.settings.read_timeout
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(conn.buf) > MAX_HEAD:
                raise HttpError(431, "Request Header Fields Too Large")
            if not self._recv_into_buf(conn, deadline):
                if conn.buf.strip():
                    raise HttpError(400, "Bad Request: incomplete request")
                raise _Closed
        if end > MAX_HEAD:
            raise HttpError(431, "Request Header Fields Too Large")
        head = bytes(conn.buf[:end])
        del conn.buf[:end + 4]
        length, close, expect = self._check_head(head)
        if length > self.settings.max_request_bytes:
            raise HttpError(413, f"Payload Too Large: {length} bytes, more than "
                            f"max_request_bytes={self.settings.max_request_bytes}")
        if expect and len(conn.buf) < length:
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(conn.buf) < length:
            if not self._recv_into_buf(conn, deadline):
                raise _Closed
        body = bytes(conn.buf[:length])
        del conn.buf[:length]
        reply = self._call(body)
        try:
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                       + (b"Connection: close\r\n" if close else b"")
                       + b"Content-Length: %d\r\n\r\n" % len(reply) + reply)
        finally:
            if self.after_reply is not None:
                self.after_reply()
        return not close

    def _check_head(self, head: bytes) -> tuple[int, bool, bool]:
        """(Content-Length, close after the reply, the client expects 100-continue)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise HttpError(400, "Bad Request: bad request line")
        method, target, version = parts
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise HttpError(400, "Bad Request: bad header line")
            key = name.lower()
            value = value.strip()
            if key in headers and key in (b"content-length", b"transfer-encoding", b"host"):
                raise HttpError(400, f"Bad Request: {name.decode('latin-1')} twice")
            headers[key] = value
        if method != b"POST":
            raise HttpError(405, "Method Not Allowed: XML-RPC is POST")
        if target not in _RPC_PATHS:
            raise HttpError(404, "Not Found: the API is at /RPC2")
        if b"transfer-encoding" in headers:
            raise HttpError(411, "Length Required: chunked bodies are not taken")
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding != b"identity":
            raise HttpError(415, "Unsupported Media Type: compressed bodies are not taken")
        raw_length = headers.get(b"content-length")
        if raw_length is None:
            raise HttpError(411, "Length Required")
        if not raw_length.isdigit() or len(raw_length) > 18:
            raise HttpError(400, "Bad Request: bad Content-Length")
        connection = headers.get(b"connection", b"").lower()
        close = connection == b"close" or (version == b"HTTP/1.0" and
                                           connection != b"keep-alive")
        expect = headers.get(b"expect", b"").lower() == b"100-continue"
        return int(raw_length), close, expect

    def _call(self, body: bytes) -> bytes:
        try:
            method, params = parse_request(body, self.limits)
        except RequestError as e:
            log.info("rpc: bad request: %s", e)
            return marshal_reply("request", status(Code.GENERAL, f"bad request: {e}"),
                                 self.limits)
        try:
            reply = self.dispatch(method, params)
        except Exception as e:  # the dispatcher catches the verbs'; this is a last guard
            log.exception("rpc %s failed unexpectedly", method)
            reply = status(Code.UNEXPECTED, f"{method}: unexpected error: {type(e).__name__}")
        return marshal_reply(method, reply, self.limits)

    def _timeout(self, conn: _Conn, deadline: float) -> None:
        """The socket's timeout for its next call: what is left until `deadline`.

        Set only when the one set already is off by more than _TIMEOUT_SLACK (each
        set is a system call): a request read at once, and its reply, keep the
        timeout the previous request left, read_timeout.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if conn.timeout <= 0 or abs(conn.timeout - left) > _TIMEOUT_SLACK:
            conn.sock.settimeout(left)
            conn.timeout = left

    def _send(self, conn: _Conn, data: bytes) -> None:
        deadline = time.monotonic() + self.settings.read_timeout
        view = memoryview(data)
        while view:
            self._timeout(conn, deadline)
            sent = conn.sock.send(view[:_CHUNK])
            view = view[sent:]

    def _answer_error(self, conn: _Conn, e: HttpError) -> None:
        try:
            self._send(conn, _error_response(e.code, e.reason))
            # Lingering close: a client still sending a (small) body must read
            # the answer rather than a reset. Bounded; nothing is kept.
            conn.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            budget = min(_LINGER_BYTES, self.settings.max_request_bytes)
            while drained < budget and time.monotonic() < deadline:
                conn.timeout = max(0.01, deadline - time.monotonic())
                conn.sock.settimeout(conn.timeout)
                chunk = conn.sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, ssl.SSLError):
            pass
