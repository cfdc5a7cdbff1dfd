"""getVdsCapabilities' network part, in VDSM's shapes, from the kernel's state.

What is reported is what netlink shows now, not what the agent believes it
did; the setup in force only says which devices make up which network.
NICs are plain links and, as VDSM's `fake_nics` do for tests, veth and dummy
links; the loopback and tap devices (VM NICs) are not NICs.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from hookvisor.net.model import Config
from hookvisor.net.netlink import BOND_MODE_NUMBERS, Link, State

_NIC_KINDS = (None, "veth", "dummy")
_IFF_LOOPBACK = 0x8


def _addresses(state: State, name: str) -> dict[str, Any]:
    addrs = state.addrs_of(name)
    v4 = [a for a in addrs if a.family == socket.AF_INET]
    v6 = [a for a in addrs if a.family == socket.AF_INET6]
    gateway = ipv6gateway = ""
    link = state.link(name)
    for route in state.routes:
        if link is not None and route.oif == link.index and route.dst is None \
                and route.table == 254 and route.gateway:
            if route.family == socket.AF_INET and not gateway:
                gateway = route.gateway
            elif route.family == socket.AF_INET6 and not ipv6gateway:
                ipv6gateway = route.gateway
    first = v4[0] if v4 else None
    return {
        "addr": first.address if first else "",
        "netmask": str(ipaddress.IPv4Network(f"0.0.0.0/{first.prefix}").netmask)
        if first else "",
        "ipv4addrs": [f"{a.address}/{a.prefix}" for a in v4],
        "ipv6addrs": [f"{a.address}/{a.prefix}" for a in v6],
        "gateway": gateway,
        "ipv6gateway": ipv6gateway or "::",
        "ipv4defaultroute": bool(gateway),
        "dhcpv4": False,
        "dhcpv6": False,
    }


def _common(state: State, link: Link) -> dict[str, Any]:
    return {"mtu": str(link.mtu), "hwaddr": link.mac or "", **_addresses(state, link.name)}


def is_nic(link: Link) -> bool:
    return link.kind in _NIC_KINDS and link.name != "lo" and not link.name.endswith("-lo")


def capabilities(state: State, config: Config) -> dict[str, Any]:
    nics: dict[str, Any] = {}
    bridges: dict[str, Any] = {}
    vlans: dict[str, Any] = {}
    bondings: dict[str, Any] = {}
    for link in state.links:
        if link.kind == "bridge":
            bridges[link.name] = {**_common(state, link), "ports": state.slaves_of(link.name),
                                  "stp": "off", "opts": {}}
        elif link.kind == "vlan":
            vlans[link.name] = {**_common(state, link), "iface": state.name_of(link.link),
                                "vlanid": link.vlan_id}
        elif link.kind == "bond":
            # Untested on this machine's kernel (no bonding).
            mode = BOND_MODE_NUMBERS.get(link.bond_mode or "", 0)
            bondings[link.name] = {**_common(state, link), "slaves": state.slaves_of(link.name),
                                   "opts": {"mode": str(mode)}}
        elif is_nic(link):
            nics[link.name] = {**_common(state, link), "speed": 0}
    networks: dict[str, Any] = {}
    for name, net in sorted(config.networks.items()):
        top = state.link(net.top)
        if top is None:
            continue  # configured but not on the host (yet): not a network it has
        entry: dict[str, Any] = {
            **_common(state, top), "iface": net.top, "bridged": net.bridged,
            "switch": "legacy", "southbound": net.port or "",
        }
        if net.bridged:
            entry["ports"] = state.slaves_of(net.top)
            entry["stp"] = "off"
        if net.vlan is not None:
            entry["vlanid"] = net.vlan
        if net.bonding:
            entry["bond"] = net.bonding
        elif net.nic:
            entry["nics"] = [net.nic]
        entry.pop("hwaddr", None)
        networks[name] = entry
    return {"nics": nics, "bridges": bridges, "vlans": vlans, "bondings": bondings,
            "networks": networks}
