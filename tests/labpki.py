"""A lab PKI for the tests and clients of a served agent (importable by test modules)."""

from __future__ import annotations

import atexit
import shutil
import ssl
import tempfile
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabPki:
    """A CA with its host certificate (localhost, 127.0.0.1, ::1) and a client certificate."""

    root: Path
    client_cert: Path
    client_key: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "certs" / "cacert.pem"

    def client_context(self) -> ssl.SSLContext:
        from hookvisor.rpc.client import client_tls_context

        return client_tls_context(self.ca_cert, self.client_cert, self.client_key)


_LAB: list[LabPki] = []


def lab_pki() -> LabPki:
    """One lab PKI per test session (made on first use, removed at exit)."""
    if not _LAB:
        from hookvisor import pki

        root = Path(tempfile.mkdtemp(prefix="hvtest-pki-"))
        atexit.register(shutil.rmtree, root, True)
        pki.init(root / "pki")
        client = pki.issue_client(root / "pki", root / "client", "hvtest-client")
        _LAB.append(LabPki(root / "pki", client.cert, client.key))
    return _LAB[0]


def proxy(url: str, timeout: float | None = 120.0) -> xmlrpc.client.ServerProxy:
    """A client of a served agent: `unix:PATH` (its socket) or `https://HOST:PORT/`
    (mutual TLS with the lab PKI's client certificate)."""
    from hookvisor.rpc.client import Address
    from hookvisor.rpc.client import proxy as make_proxy

    if url.startswith("unix:"):
        return make_proxy(Address(socket=Path(url[5:])), timeout=timeout)
    if url.startswith("https://"):
        hostport = url[len("https://"):].rstrip("/")
        return make_proxy(Address(hostport=hostport), timeout=timeout,
                          tls=lab_pki().client_context())
    return xmlrpc.client.ServerProxy(url, allow_none=True)
