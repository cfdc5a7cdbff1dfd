"""A client of the agent's API: over its Unix socket, or mutual TLS with keep-alive.

For operators (`hookvisor vm ...`) and for agent-to-agent calls (migration):
`AgentClient(address).call(verb, *params)` returns the reply when its status
is 0 and raises AgentError (one line, VDSM's code name) otherwise. The
transports are xmlrpc.client Transports, so `proxy()` is a plain
ServerProxy for whoever wants the raw replies.

On a host the TLS client presents the host's own certificate (pki_paths()),
as VDSM's client does.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

from hookvisor.config import Settings
from hookvisor.errors import CODE_NAMES, Code
from hookvisor.rpc import unixsock

DEFAULT_TIMEOUT = 300.0  # a create runs hooks; their own timeouts are 60 s each by default


class AgentError(Exception):
    """The agent answered with a non-zero status, or could not be reached."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = unixsock.connect(self.path, self.timeout)


class UnixTransport(xmlrpc.client.Transport):
    """HTTP/1.1 over the agent's Unix socket; the connection is kept between calls."""

    def __init__(self, path: Path, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = self._connection[1]
        if conn is None:
            conn = _UnixConnection(self.path, self.timeout)
            self._connection = "unix", conn
        return conn


class TimeoutTransport(xmlrpc.client.Transport):
    """Plain HTTP (an insecure agent), with a socket timeout."""

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


def client_tls_context(ca: Path, cert: Path, key: Path,
                       check_hostname: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    for what, path in (("CA certificate", ca), ("client certificate", cert),
                       ("client key", key)):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist (set pki_dir, or "
                                    "`hookvisor pki issue` a client certificate)")
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class TLSTransport(xmlrpc.client.SafeTransport):
    """Mutual TLS, one handshake per connection, the connection kept between calls."""

    def __init__(self, context: ssl.SSLContext, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__(context=context)
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


@dataclass(frozen=True)
class Address:
    """Where the agent is: a Unix socket path, or HOST:PORT (TLS unless insecure)."""

    socket: Path | None = None
    hostport: str | None = None
    insecure: bool = False

    def __str__(self) -> str:
        return str(self.socket) if self.socket is not None else str(self.hostport)


def address_for(settings: Settings, agent: str | None = None,
                insecure: bool = False) -> Address:
    """The Unix socket of `settings` unless an `agent` HOST:PORT is given (or set:
    the `agent` setting, HOOKVISOR_AGENT)."""
    agent = agent or settings.agent
    if agent:
        return Address(hostport=agent, insecure=insecure)
    return Address(socket=settings.socket_path())


def proxy(address: Address, settings: Settings | None = None,
          timeout: float | None = DEFAULT_TIMEOUT,
          tls: ssl.SSLContext | None = None) -> xmlrpc.client.ServerProxy:
    """A ServerProxy for `address`; TLS uses `tls` or the host's certificate of `settings`."""
    if address.socket is not None:
        return xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                         transport=UnixTransport(address.socket, timeout),
                                         allow_none=True)
    if address.insecure:
        return xmlrpc.client.ServerProxy(f"http://{address.hostport}/RPC2",
                                         transport=TimeoutTransport(timeout), allow_none=True)
    if tls is None:
        ca, cert, key = (settings or Settings()).pki_paths()
        tls = client_tls_context(ca, cert, key)
    return xmlrpc.client.ServerProxy(f"https://{address.hostport}/RPC2",
                                     transport=TLSTransport(tls, timeout), allow_none=True)


def code_name(code: int) -> str:
    try:
        return CODE_NAMES[Code(code)]
    except ValueError:
        return "error"


class AgentClient:
    """One connection's worth of calls to one agent (not shared between threads)."""

    def __init__(self, address: Address, settings: Settings | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        try:
            self.proxy = proxy(address, settings, timeout, tls)
        except (OSError, ssl.SSLError) as e:
            raise AgentError(f"cannot reach the agent at {address}: {e}") from None

    def raw(self, verb: str, *params: Any) -> dict[str, Any]:
        """The reply as sent, whatever its status; AgentError if there is none."""
        where = self.address
        try:
            reply: dict[str, Any] = getattr(self.proxy, verb)(*params)
        except ssl.SSLCertVerificationError as e:
            raise AgentError(f"TLS handshake with {where} failed: the agent's certificate: "
                             f"{e.verify_message}") from None
        except ssl.SSLError as e:
            raise AgentError(f"TLS handshake refused by {where}: {e.reason or e}") from None
        except xmlrpc.client.ProtocolError as e:
            raise AgentError(f"the agent at {where} refused the call: {e.errcode} "
                             f"{e.errmsg}") from None
        except xmlrpc.client.Fault as e:
            raise AgentError(f"agent fault on {verb}: {e.faultString}") from None
        except (ExpatError, xmlrpc.client.ResponseError, http.client.HTTPException) as e:
            raise AgentError(f"bad reply from the agent at {where}: "
                             f"{type(e).__name__}: {e}") from None
        except (BrokenPipeError, ConnectionResetError) as e:
            raise AgentError(f"the agent at {where} closed the connection: {e} (a request "
                             "over its max_request_bytes is refused unread)") from None
        except (ConnectionError, socket.gaierror, TimeoutError, OSError) as e:
            raise AgentError(f"cannot reach the agent at {where}: {e}") from None
        except OverflowError as e:  # xmlrpc.client cannot send ints past 32 bits
            raise AgentError(f"{verb}: {e}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("status"), dict):
            raise AgentError(f"bad reply from the agent at {where}: no status")
        return reply

    def call(self, verb: str, *params: Any) -> dict[str, Any]:
        """The reply if its status is 0, else AgentError with VDSM's code name."""
        reply = self.raw(verb, *params)
        st = reply["status"]
        try:
            code = int(st.get("code", Code.UNEXPECTED))
        except (TypeError, ValueError):
            code = int(Code.UNEXPECTED)
        if code != 0:
            raise AgentError(f"{code_name(code)} ({code}): {st.get('message', '')}", code)
        return reply

    def close(self) -> None:
        self.proxy("close")()
