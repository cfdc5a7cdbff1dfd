"""A thin adapter over pyroute2's IPRoute: the kernel's state as plain records, and the calls.

`Netlink(netns="name")` opens its socket inside that network namespace (pyroute2
creates it there and hands it back), so the agent, or a test, can work on a
namespace without entering it. Every failure is a `NetlinkFailure` naming the
call and the kernel's reason.

Not exercised on this machine's kernel (no 8021q, bonding or dummy): `add_vlan`,
`add_bond` and the bond/VLAN fields of `Link` (they run inside the tiny guest).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/var/run/netns")  # where `ip netns` and pyroute2 keep named namespaces
IFF_UP = 0x1
RTPROT_KERNEL = 2
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255

# Bond options as the kernel's IFLA_BOND_* numbers take them.
BOND_MODE_NUMBERS = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3,
                     "802.3ad": 4, "balance-tlb": 5, "balance-alb": 6}
_XMIT_HASH = {"layer2": 0, "layer3+4": 1, "layer2+3": 2, "encap2+3": 3, "encap3+4": 4}
_LACP_RATE = {"slow": 0, "fast": 1, "0": 0, "1": 1}


class NetlinkFailure(Exception):
    """A netlink call the kernel refused; `errno` is the kernel's, when it gave one."""

    def __init__(self, what: str, reason: str, errno: int | None = None,
                 missing: str | None = None) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.errno = errno
        # The device the call needed and did not find, if that is why it failed.
        self.missing = missing


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # 'bridge', 'vlan', 'bond', 'veth', ...; None for a plain NIC
    mtu: int
    min_mtu: int
    max_mtu: int  # 0: the kernel does not say
    master: int | None
    up: bool
    mac: str | None
    vlan_id: int | None = None
    link: int | None = None  # a VLAN's base device
    bond_mode: str | None = None


@dataclass(frozen=True)
class Addr:
    index: int
    family: int
    address: str
    prefix: int

    @property
    def link_local(self) -> bool:
        return self.family == socket.AF_INET6 and ipaddress.IPv6Address(self.address).is_link_local


@dataclass(frozen=True)
class Route:
    family: int
    dst: str | None  # None: the default route
    dst_len: int
    gateway: str | None
    oif: int | None
    table: int
    proto: int
    scope: int
    type: int
    priority: int | None

    @property
    def kernel_made(self) -> bool:
        """Routes the kernel adds and removes with addresses and links (never journaled)."""
        return self.proto == RTPROT_KERNEL or self.table == RT_TABLE_LOCAL or (
            self.family == socket.AF_INET6 and self.dst is not None
            and (ipaddress.IPv6Address(self.dst).is_link_local
                 or ipaddress.IPv6Address(self.dst).is_multicast))


@dataclass(frozen=True)
class State:
    links: tuple[Link, ...]
    addrs: tuple[Addr, ...]
    routes: tuple[Route, ...]

    def link(self, name: str) -> Link | None:
        for link in self.links:
            if link.name == name:
                return link
        return None

    def name_of(self, index: int | None) -> str | None:
        for link in self.links:
            if link.index == index:
                return link.name
        return None

    def addrs_of(self, name: str) -> list[Addr]:
        link = self.link(name)
        if link is None:
            return []
        return [a for a in self.addrs if a.index == link.index and not a.link_local]

    def routes_via(self, name: str) -> list[Route]:
        """Routes through `name` that someone added (what a delete of the link takes away)."""
        link = self.link(name)
        if link is None:
            return []
        return [r for r in self.routes if r.oif == link.index and not r.kernel_made]

    def slaves_of(self, name: str) -> list[str]:
        link = self.link(name)
        if link is None:
            return []
        return sorted(x.name for x in self.links if x.master == link.index)

    def comparable(self) -> dict[str, Any]:
        """The state by name, not index (a re-created link gets a new index).

        IPv6 link-local addresses and their routes are left out: the kernel makes
        them when a link gets carrier, on its own schedule.
        """
        links = {}
        for link in self.links:
            links[link.name] = (link.kind, link.mtu, self.name_of(link.master), link.up,
                                link.mac, link.vlan_id, self.name_of(link.link), link.bond_mode)
        addrs = sorted((self.name_of(a.index) or "?", a.family, a.address, a.prefix)
                       for a in self.addrs if not a.link_local)
        routes = sorted(
            (r.family, r.dst or "", r.dst_len, r.gateway or "", self.name_of(r.oif) or "",
             r.table, r.proto, r.scope, r.type, r.priority or 0)
            for r in self.routes
            if not (r.family == socket.AF_INET6 and r.dst is not None and (
                ipaddress.IPv6Address(r.dst).is_link_local
                or ipaddress.IPv6Address(r.dst).is_multicast)))
        return {"links": links, "addrs": addrs, "routes": routes}


def _linkinfo(msg: Any) -> tuple[str | None, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None, None
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


def _link_record(msg: Any) -> Link:
    kind, data = _linkinfo(msg)
    vlan_id = bond_mode = None
    if data is not None and kind == "vlan":
        vlan_id = data.get_attr("IFLA_VLAN_ID")
    if data is not None and kind == "bond":
        number = data.get_attr("IFLA_BOND_MODE")
        bond_mode = {v: k for k, v in BOND_MODE_NUMBERS.items()}.get(number, str(number))
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        mtu=msg.get_attr("IFLA_MTU") or 0,
        min_mtu=msg.get_attr("IFLA_MIN_MTU") or 0,
        max_mtu=msg.get_attr("IFLA_MAX_MTU") or 0,
        master=msg.get_attr("IFLA_MASTER"),
        up=bool(msg["flags"] & IFF_UP),
        mac=msg.get_attr("IFLA_ADDRESS"),
        vlan_id=vlan_id,
        link=msg.get_attr("IFLA_LINK") if kind == "vlan" else None,
        bond_mode=bond_mode,
    )


class Netlink:
    """One rtnetlink socket, in the caller's namespace or in `netns`."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        # name -> ifindex, from the last dump: spares a lookup per call.
        self._indexes: dict[str, int] = {}
        # Imported here: pyroute2 takes ~0.1 s to import, the agent needs it only
        # once networks are asked about.
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        self._netlink_error: type[Exception] = NetlinkError
        # pyroute2 would create a missing namespace, and configure that by mistake.
        if netns and not (NETNS_DIR / netns).exists():
            raise NetlinkFailure("open netlink", f"network namespace {netns!r} does not exist "
                                 f"(no {NETNS_DIR / netns})")
        try:
            self._ipr = IPRoute(netns=netns) if netns else IPRoute()
        except (NetlinkError, OSError) as e:
            raise NetlinkFailure(f"open netlink (netns {netns})", str(e)) from e

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._netlink_error as e:
            code = getattr(e, "code", None)
            code = code if isinstance(code, int) else None
            raise NetlinkFailure(what, _reason(e, code), code) from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NetlinkFailure(what, str(e)) from e

    # --- reading -----------------------------------------------------------------

    def state(self) -> State:
        links = tuple(_link_record(m) for m in self._call("dump links", self._ipr.get_links))
        self._indexes = {link.name: link.index for link in links}
        addrs = tuple(
            Addr(m["index"], m["family"], m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL"),
                 m["prefixlen"])
            for m in self._call("dump addresses", self._ipr.get_addr))
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in self._call("dump routes", self._ipr.get_routes, family=family):
                routes.append(Route(
                    family=m["family"], dst=m.get_attr("RTA_DST"), dst_len=m["dst_len"],
                    gateway=m.get_attr("RTA_GATEWAY"), oif=m.get_attr("RTA_OIF"),
                    table=m.get_attr("RTA_TABLE") or m["table"], proto=m["proto"],
                    scope=m["scope"], type=m["type"], priority=m.get_attr("RTA_PRIORITY")))
        return State(links, addrs, tuple(routes))

    def forget(self) -> None:
        """Drop the cached indexes (after links changed outside these calls)."""
        self._indexes.clear()

    def index(self, name: str, what: str | None = None) -> int:
        """`name`'s ifindex; a missing device fails as the call `what` that needed it."""
        if name in self._indexes:
            return self._indexes[name]
        what = what or f"look up {name}"
        found = self._call(what, self._ipr.link_lookup, ifname=name)
        if not found:
            raise NetlinkFailure(what, "no such device", 19, missing=name)
        self._indexes[name] = int(found[0])
        return self._indexes[name]

    # --- links -------------------------------------------------------------------

    def add_bridge(self, name: str, mac: str | None = None) -> None:
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mac:
            kwargs["address"] = mac
        self._call(f"create bridge {name}", self._ipr.link, "add", **kwargs)

    def add_vlan(self, name: str, base: str, vlan_id: int) -> None:
        # Untested on this machine's kernel (no 8021q); runs in the tiny guest.
        self._call(f"create vlan {name}", self._ipr.link, "add", ifname=name, kind="vlan",
                   link=self.index(base, f"create vlan {name}"), vlan_id=vlan_id)

    def add_bond(self, name: str, options: dict[str, str], mac: str | None = None) -> None:
        # Untested on this machine's kernel (no bonding); runs in the tiny guest.
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bond"}
        for key, value in options.items():
            if key == "mode":
                kwargs["bond_mode"] = BOND_MODE_NUMBERS[value]
            elif key == "xmit_hash_policy":
                kwargs["bond_xmit_hash_policy"] = _XMIT_HASH[value]
            elif key == "lacp_rate":
                kwargs["bond_ad_lacp_rate"] = _LACP_RATE[value]
            elif key == "primary":
                continue  # set once its slave is in (the kernel needs an index)
            else:
                kwargs[f"bond_{key}"] = int(value)
        if mac:
            kwargs["address"] = mac
        self._call(f"create bond {name}", self._ipr.link, "add", **kwargs)

    def delete_link(self, name: str) -> None:
        index = self.index(name, f"delete {name}")
        self._indexes.pop(name, None)
        self._call(f"delete {name}", self._ipr.link, "del", index=index)

    def set_master(self, name: str, master: str | None) -> None:
        what = f"set master of {name} to {master}" if master else f"release {name}"
        target = self.index(master, what) if master else 0
        self._call(what, self._ipr.link, "set", index=self.index(name, what), master=target)

    def set_mtu(self, name: str, mtu: int) -> None:
        what = f"set mtu {mtu} on {name}"
        self._call(what, self._ipr.link, "set", index=self.index(name, what), mtu=mtu)

    def set_up(self, name: str, up: bool) -> None:
        state = "up" if up else "down"
        what = f"set {name} {state}"
        self._call(what, self._ipr.link, "set", index=self.index(name, what), state=state)

    # --- addresses and routes ----------------------------------------------------

    def add_addr(self, name: str, address: str, prefix: int) -> None:
        what = f"add address {address}/{prefix} to {name}"
        self._call(what, self._ipr.addr, "add", index=self.index(name, what), address=address,
                   prefixlen=prefix)

    def del_addr(self, name: str, address: str, prefix: int) -> None:
        what = f"remove address {address}/{prefix} from {name}"
        self._call(what, self._ipr.addr, "del", index=self.index(name, what), address=address,
                   prefixlen=prefix)

    def add_route(self, route: Route, oif_name: str | None) -> None:
        what = f"add route {_route_text(route, oif_name)}"
        self._call(what, self._ipr.route, "add", **self._route_args(route, oif_name, what))

    def del_route(self, route: Route, oif_name: str | None) -> None:
        what = f"remove route {_route_text(route, oif_name)}"
        self._call(what, self._ipr.route, "del", **self._route_args(route, oif_name, what))

    def _route_args(self, route: Route, oif_name: str | None, what: str) -> dict[str, Any]:
        zero = "0.0.0.0" if route.family == socket.AF_INET else "::"
        args: dict[str, Any] = {
            "family": route.family, "dst": f"{route.dst or zero}/{route.dst_len}",
            "table": route.table, "proto": route.proto, "scope": route.scope,
            "type": route.type,
        }
        if route.gateway:
            args["gateway"] = route.gateway
        if oif_name:
            args["oif"] = self.index(oif_name, what)
        if route.priority is not None:
            args["priority"] = route.priority
        return args


def default_route(family: int, gateway: str, priority: int | None = None) -> Route:
    """A static default route via `gateway` in the main table (proto boot, as `ip route`)."""
    return Route(family=family, dst=None, dst_len=0, gateway=gateway, oif=None,
                 table=RT_TABLE_MAIN, proto=3, scope=0, type=1, priority=priority)


def _route_text(route: Route, oif_name: str | None) -> str:
    dst = f"{route.dst}/{route.dst_len}" if route.dst else "default"
    via = f" via {route.gateway}" if route.gateway else ""
    dev = f" dev {oif_name}" if oif_name else ""
    return f"{dst}{via}{dev}"


def _reason(e: Exception, code: int | None) -> str:
    import os

    text = str(e.args[1]) if len(e.args) > 1 else ""
    return text or (os.strerror(code) if code else str(e))
