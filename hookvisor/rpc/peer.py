"""Agent-to-agent calls for the agent core (migration): the client library behind
the agent's own Peer protocol, so that the agent layer never imports this one.

A peer is called over mutual TLS with this host's own certificate (pki_paths()),
as VDSM's source host calls the destination; the TLS context is made once.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

from hookvisor.agent.migration import Connect, Peer, PeerError
from hookvisor.config import Settings
from hookvisor.rpc.client import AgentClient, AgentError, address_for, client_tls_context


class _Peer:
    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def call(self, verb: str, *params: Any) -> dict[str, Any]:
        try:
            return self._client.call(verb, *params)
        except AgentError as e:
            raise PeerError(str(e), e.code) from None

    def close(self) -> None:
        try:
            self._client.close()
        except (AgentError, OSError) as e:
            raise PeerError(str(e)) from None


def peer_factory(settings: Settings) -> Connect:
    """connect(HOST:PORT, timeout) -> a Peer; PeerError if the TLS setup fails."""
    lock = threading.Lock()
    contexts: list[ssl.SSLContext] = []

    def tls() -> ssl.SSLContext | None:
        if settings.insecure:
            return None
        with lock:
            if not contexts:
                contexts.append(client_tls_context(*settings.pki_paths()))
            return contexts[0]

    def connect(hostport: str, timeout: float) -> Peer:
        try:
            client = AgentClient(address_for(settings, hostport, settings.insecure), settings,
                                 timeout, tls())
        except (AgentError, OSError, ssl.SSLError) as e:
            raise PeerError(f"cannot reach the agent at {hostport}: {e}") from None
        return _Peer(client)

    return connect
