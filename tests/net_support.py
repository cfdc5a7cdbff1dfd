"""Network namespaces for tests: veth pairs standing for NICs, never the host's own."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from pyroute2 import IPRoute
from support import unavailable

from hookvisor.net.model import Request, parse_request
from hookvisor.net.netlink import Netlink


def req(networks: Any = None, bondings: Any = None, options: Any = None) -> Request:
    """A parsed setupNetworks request; empty dicts for what is not given."""
    return parse_request(networks or {}, bondings or {}, options)


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        self._ipr = IPRoute(netns=name)
        self.opened: list[Netlink] = []

    def veth(self, name: str, up: bool = True, mtu: int | None = None,
             max_mtu: int | None = None) -> None:
        """A NIC stand-in: `name` with its peer `name`p (peer left down: no carrier,
        so the kernel adds no link-local addresses behind the test's back)."""
        self._ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")
        idx = self._ipr.link_lookup(ifname=name)[0]
        if mtu is not None:
            self._ipr.link("set", index=idx, mtu=mtu)
        if up:
            self._ipr.link("set", index=idx, state="up")

    def delete(self, name: str) -> None:
        self._ipr.link("del", index=self._ipr.link_lookup(ifname=name)[0])

    def netlink(self) -> Netlink:
        nl = Netlink(self.name)
        self.opened.append(nl)
        return nl

    def run(self, *argv: str) -> str:
        """A command inside the namespace (test set-up only: sysctls)."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True,
                              capture_output=True, text=True).stdout

    def close(self) -> None:
        for nl in self.opened:
            nl.close()
        self._ipr.close()


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("network namespace tests need root")
