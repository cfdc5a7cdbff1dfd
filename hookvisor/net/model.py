"""VDSM's setupNetworks dicts as typed records, every problem named.

Pure Python: nothing here looks at the kernel. What can only be checked
against the host (does the NIC exist, can it take this MTU) is in
`hookvisor.net.apply`. A parse collects every problem of a request before it
raises, so a client fixes them in one round.

Names follow VDSM: a bridged network's bridge is named after the network, a
VLAN device is `<nic or bond>.<id>`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The kernel's IFNAMSIZ is 16 with the terminating NUL.
IFNAME_MAX = 15
DEFAULT_MTU = 1500
MIN_MTU = 68  # the IPv4 minimum (RFC 791); a device's own floor is checked on the host
MAX_MTU = 65535
IPV6_MIN_MTU = 1280
VLAN_MIN, VLAN_MAX = 1, 4094
DEFAULT_CONNECTIVITY_TIMEOUT = 120

BOND_MODES = {
    "0": "balance-rr", "1": "active-backup", "2": "balance-xor", "3": "broadcast",
    "4": "802.3ad", "5": "balance-tlb", "6": "balance-alb",
}
_BOND_INT_OPTIONS = ("miimon", "updelay", "downdelay", "arp_interval")
_BOND_CHOICES = {
    "lacp_rate": ("slow", "fast", "0", "1"),
    "xmit_hash_policy": ("layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4"),
}

NETWORK_KEYS = frozenset({
    "nic", "bonding", "vlan", "bridged", "mtu", "ipaddr", "netmask", "prefix", "gateway",
    "defaultRoute", "bootproto", "ipv6addr", "ipv6gateway", "ipv6autoconf", "dhcpv6",
    "custom", "remove", "switch", "nameservers",
})
BOND_KEYS = frozenset({"nics", "options", "remove", "switch"})
OPTION_KEYS = frozenset({"connectivityCheck", "connectivityTimeout", "commitOnSuccess"})


class RequestError(ValueError):
    """A request that cannot be applied; `problems` names each one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def ifname_problem(name: object) -> str | None:
    """Why `name` is not a valid Linux interface name (the kernel's dev_valid_name), or None."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "empty"
    if len(name.encode()) > IFNAME_MAX:
        return f"longer than {IFNAME_MAX} bytes"
    if name in (".", ".."):
        return "'.' and '..' are not interface names"
    for ch in name:
        if ch == "/" or ch == ":" or ch.isspace() or not ch.isprintable():
            return f"contains {ch!r}"
    return None


@dataclass(frozen=True)
class Address:
    address: str
    prefix: int
    gateway: str | None = None

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass(frozen=True)
class Network:
    name: str
    nic: str | None = None
    bonding: str | None = None
    vlan: int | None = None
    bridged: bool = True
    mtu: int | None = None
    ipv4: Address | None = None
    ipv6: Address | None = None
    default_route: bool = False
    custom: Mapping[str, str] = field(default_factory=dict)
    nameservers: tuple[str, ...] = ()

    @property
    def base(self) -> str | None:
        """The NIC or bond the network sits on (None: a bridge with no port)."""
        return self.nic or self.bonding

    @property
    def vlan_device(self) -> str | None:
        if self.vlan is None or self.base is None:
            return None
        return f"{self.base}.{self.vlan}"

    @property
    def port(self) -> str | None:
        """The device that carries the network's traffic below any bridge."""
        return self.vlan_device or self.base

    @property
    def top(self) -> str:
        """The device the addresses and routes live on."""
        if self.bridged:
            return self.name
        assert self.port is not None  # a bridgeless network always has a port (checked)
        return self.port

    @property
    def effective_mtu(self) -> int:
        return self.mtu if self.mtu is not None else DEFAULT_MTU

    def to_dict(self) -> dict[str, Any]:
        """VDSM's attribute dict (what a client sent, normalised)."""
        out: dict[str, Any] = {"bridged": self.bridged}
        if self.mtu is not None:
            out["mtu"] = self.mtu
        if self.nic is not None:
            out["nic"] = self.nic
        if self.bonding is not None:
            out["bonding"] = self.bonding
        if self.vlan is not None:
            out["vlan"] = self.vlan
        if self.ipv4 is not None:
            out["ipaddr"] = self.ipv4.address
            out["prefix"] = self.ipv4.prefix
            out["netmask"] = str(ipaddress.IPv4Network(f"0.0.0.0/{self.ipv4.prefix}").netmask)
            if self.ipv4.gateway:
                out["gateway"] = self.ipv4.gateway
        if self.ipv6 is not None:
            out["ipv6addr"] = self.ipv6.cidr
            if self.ipv6.gateway:
                out["ipv6gateway"] = self.ipv6.gateway
        out["defaultRoute"] = self.default_route
        if self.custom:
            out["custom"] = dict(self.custom)
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        return out


@dataclass(frozen=True)
class Bond:
    name: str
    nics: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.options.get("mode", "balance-rr")

    def options_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.options.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"nics": list(self.nics), "options": self.options_text()}


@dataclass(frozen=True)
class Options:
    connectivity_check: bool = False
    connectivity_timeout: int = DEFAULT_CONNECTIVITY_TIMEOUT
    commit_on_success: bool = False


@dataclass(frozen=True)
class Config:
    """A whole host setup: what is persisted and what a request turns into."""

    networks: Mapping[str, Network] = field(default_factory=dict)
    bonds: Mapping[str, Bond] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"networks": {n: net.to_dict() for n, net in sorted(self.networks.items())},
                "bondings": {n: b.to_dict() for n, b in sorted(self.bonds.items())}}


@dataclass(frozen=True)
class Request:
    networks: Mapping[str, Network]
    bonds: Mapping[str, Bond]
    remove_networks: frozenset[str] = frozenset()
    remove_bonds: frozenset[str] = frozenset()
    options: Options = Options()

    def merged(self, current: Config) -> Config:
        """The setup after this request: VDSM's semantics, a named network is replaced whole."""
        nets = {n: v for n, v in current.networks.items()
                if n not in self.remove_networks and n not in self.networks}
        nets.update(self.networks)
        bonds = {n: v for n, v in current.bonds.items()
                 if n not in self.remove_bonds and n not in self.bonds}
        bonds.update(self.bonds)
        return Config(nets, bonds)


# --- field parsers: each returns the value or appends a problem -----------------


def _bool(value: object, where: str, problems: list[str]) -> bool | None:
    if isinstance(value, bool):
        return value
    # XML-RPC clients (and VDSM's engine, at times) send booleans as strings.
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    problems.append(f"{where}: expected a boolean, got {value!r}")
    return None


def _int(value: object, where: str, problems: list[str], low: int, high: int) -> int | None:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 10:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: expected an integer, got {value!r}")
        return None
    if not low <= value <= high:
        problems.append(f"{where}: {value} is out of range {low}..{high}")
        return None
    return value


def _ifname(value: object, where: str, problems: list[str]) -> str | None:
    why = ifname_problem(value)
    if why is not None:
        problems.append(f"{where}: {value!r} is not a valid interface name ({why})")
        return None
    assert isinstance(value, str)
    return value


def _ip(value: object, version: int, where: str, problems: list[str]) -> str | None:
    if not isinstance(value, str):
        problems.append(f"{where}: expected an IPv{version} address, got {value!r}")
        return None
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        problems.append(f"{where}: {value!r} is not an IPv{version} address")
        return None
    if ip.version != version:
        problems.append(f"{where}: {value!r} is not an IPv{version} address")
        return None
    if ip.is_unspecified or ip.is_multicast or (version == 4 and ip == ipaddress.IPv4Address(
            "255.255.255.255")):
        problems.append(f"{where}: {value!r} cannot be a host's address")
        return None
    return str(ip)


def _ipv4(attrs: Mapping[str, Any], where: str, problems: list[str]) -> Address | None:
    has = {k for k in ("ipaddr", "netmask", "prefix", "gateway") if attrs.get(k) not in (None, "")}
    if not has:
        return None
    if "ipaddr" not in has:
        problems.append(f"{where}: {', '.join(sorted(has))} given without ipaddr")
        return None
    address = _ip(attrs["ipaddr"], 4, f"{where}.ipaddr", problems)
    prefix: int | None = None
    if "prefix" in has:
        prefix = _int(attrs["prefix"], f"{where}.prefix", problems, 0, 32)
    if "netmask" in has:
        mask = attrs["netmask"]
        try:
            from_mask = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
        except (ValueError, TypeError):
            problems.append(f"{where}.netmask: {mask!r} is not a netmask")
            return None
        if prefix is not None and prefix != from_mask:
            problems.append(f"{where}: netmask {mask} and prefix {prefix} disagree")
            return None
        prefix = from_mask
    if "prefix" not in has and "netmask" not in has:
        problems.append(f"{where}: ipaddr needs a netmask or a prefix")
        return None
    gateway = None
    if "gateway" in has:
        gateway = _ip(attrs["gateway"], 4, f"{where}.gateway", problems)
    if address is None or prefix is None:
        return None
    if prefix in (0, 32):
        problems.append(f"{where}: prefix /{prefix} leaves no subnet for a host address")
        return None
    net = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    if ipaddress.IPv4Address(address) in (net.network_address, net.broadcast_address) \
            and prefix < 31:
        problems.append(f"{where}.ipaddr: {address} is the network or broadcast address of {net}")
        return None
    if gateway is not None:
        if ipaddress.IPv4Address(gateway) not in net:
            problems.append(f"{where}.gateway: {gateway} is not in {net}")
            return None
        if gateway == address:
            problems.append(f"{where}.gateway: {gateway} is the network's own address")
            return None
    return Address(address, prefix, gateway)


def _ipv6(attrs: Mapping[str, Any], where: str, problems: list[str]) -> Address | None:
    text, gw = attrs.get("ipv6addr"), attrs.get("ipv6gateway")
    if text in (None, ""):
        if gw not in (None, ""):
            problems.append(f"{where}: ipv6gateway given without ipv6addr")
        return None
    if not isinstance(text, str) or "/" not in text:
        problems.append(f"{where}.ipv6addr: expected ADDRESS/PREFIX, got {text!r}")
        return None
    addr_text, _, prefix_text = text.partition("/")
    address = _ip(addr_text, 6, f"{where}.ipv6addr", problems)
    prefix = _int(prefix_text, f"{where}.ipv6addr prefix", problems, 1, 127)
    gateway = None
    if gw not in (None, ""):
        gateway = _ip(gw, 6, f"{where}.ipv6gateway", problems)
    if address is None or prefix is None:
        return None
    if ipaddress.IPv6Address(address).is_link_local:
        problems.append(f"{where}.ipv6addr: {address} is link-local (the kernel makes those)")
        return None
    return Address(address, prefix, gateway)


def _custom(value: object, where: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a struct of NAME: value, got {value!r}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float) or isinstance(v, bool):
            problems.append(f"{where}.{k}: expected a string value, got {v!r}")
            continue
        out[k] = str(v)
    return out


def parse_bond_options(text: object, where: str, problems: list[str]) -> dict[str, str]:
    """'mode=4 miimon=100' -> {'mode': '802.3ad', 'miimon': '100'}; modes by number or name."""
    if text in (None, ""):
        return {}
    if not isinstance(text, str):
        problems.append(f"{where}: expected 'key=value ...', got {text!r}")
        return {}
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            problems.append(f"{where}: {token!r} is not key=value")
            continue
        if key in out:
            problems.append(f"{where}: {key} given twice")
        elif key == "mode":
            mode = BOND_MODES.get(value, value)
            if mode not in BOND_MODES.values():
                problems.append(f"{where}: unknown bond mode {value!r} "
                                f"(0-6 or {', '.join(BOND_MODES.values())})")
                continue
            out[key] = mode
        elif key in _BOND_INT_OPTIONS:
            if not value.isdigit() or len(value) > 9:
                problems.append(f"{where}: {key} expects a non-negative integer, got {value!r}")
                continue
            out[key] = str(int(value))
        elif key in _BOND_CHOICES:
            if value not in _BOND_CHOICES[key]:
                problems.append(f"{where}: {key} expects one of "
                                f"{', '.join(_BOND_CHOICES[key])}, got {value!r}")
                continue
            out[key] = value
        elif key == "primary":
            name = _ifname(value, f"{where}.primary", problems)
            if name is not None:
                out[key] = name
        else:
            known = ["mode", "primary", *_BOND_INT_OPTIONS, *_BOND_CHOICES]
            problems.append(f"{where}: unknown bond option {key!r} (known: "
                            f"{', '.join(sorted(known))})")
    return out


# --- the records ------------------------------------------------------------------


def _unknown(attrs: Mapping[str, Any], known: frozenset[str], where: str,
             problems: list[str]) -> None:
    extra = sorted(str(k) for k in attrs if k not in known)
    if extra:
        problems.append(f"{where}: unknown key(s) {', '.join(extra)} "
                        f"(known: {', '.join(sorted(known))})")


def _is_remove(attrs: Mapping[str, Any], where: str, problems: list[str]) -> bool:
    if "remove" not in attrs:
        return False
    remove = _bool(attrs["remove"], f"{where}.remove", problems)
    if remove:
        others = sorted(str(k) for k in attrs if k not in ("remove", "custom", "switch"))
        if others:
            problems.append(f"{where}: remove cannot be combined with {', '.join(others)}")
    return bool(remove)


def parse_network(name: str, attrs: Mapping[str, Any], problems: list[str]) -> Network | None:
    where = f"network {name}"
    start = len(problems)
    _unknown(attrs, NETWORK_KEYS, where, problems)
    nic = bond = None
    if attrs.get("nic") not in (None, ""):
        nic = _ifname(attrs["nic"], f"{where}.nic", problems)
    if attrs.get("bonding") not in (None, ""):
        bond = _ifname(attrs["bonding"], f"{where}.bonding", problems)
    if attrs.get("nic") not in (None, "") and attrs.get("bonding") not in (None, ""):
        problems.append(f"{where}: nic and bonding are exclusive")
    vlan = None
    if attrs.get("vlan") not in (None, ""):
        vlan = _int(attrs["vlan"], f"{where}.vlan", problems, VLAN_MIN, VLAN_MAX)
        if nic is None and bond is None and attrs.get("nic") in (None, "") \
                and attrs.get("bonding") in (None, ""):
            problems.append(f"{where}: a vlan needs a nic or a bonding")
    bridged = True
    if "bridged" in attrs:
        bridged = bool(_bool(attrs["bridged"], f"{where}.bridged", problems))
    if bridged:
        _ifname(name, f"{where}: the bridge name", problems)
    elif attrs.get("nic") in (None, "") and attrs.get("bonding") in (None, ""):
        problems.append(f"{where}: a bridgeless network needs a nic or a bonding")
    base = nic or bond
    if vlan is not None and base is not None:
        _ifname(f"{base}.{vlan}", f"{where}: the vlan device name", problems)
    mtu = None
    if attrs.get("mtu") not in (None, ""):
        mtu = _int(attrs["mtu"], f"{where}.mtu", problems, MIN_MTU, MAX_MTU)
    ipv4 = _ipv4(attrs, where, problems)
    ipv6 = _ipv6(attrs, where, problems)
    if ipv6 is not None and mtu is not None and mtu < IPV6_MIN_MTU:
        problems.append(f"{where}: IPv6 needs an mtu of at least {IPV6_MIN_MTU}, got {mtu}")
    default_route = False
    if "defaultRoute" in attrs:
        default_route = bool(_bool(attrs["defaultRoute"], f"{where}.defaultRoute", problems))
    if default_route and (ipv4 is None or ipv4.gateway is None) and \
            (ipv6 is None or ipv6.gateway is None):
        problems.append(f"{where}: defaultRoute needs a gateway or an ipv6gateway")
    bootproto = attrs.get("bootproto")
    if bootproto not in (None, "", "none"):
        problems.append(f"{where}.bootproto: only 'none' (static) is supported, got {bootproto!r}")
    for key in ("ipv6autoconf", "dhcpv6"):
        if key in attrs and _bool(attrs[key], f"{where}.{key}", problems):
            problems.append(f"{where}.{key}: not supported (static addresses only)")
    switch = attrs.get("switch")
    if switch not in (None, "legacy"):
        problems.append(f"{where}.switch: only 'legacy' is supported, got {switch!r}")
    custom = _custom(attrs.get("custom"), f"{where}.custom", problems)
    servers: list[str] = []
    raw = attrs.get("nameservers")
    if raw not in (None, ""):
        if not isinstance(raw, list | tuple):
            problems.append(f"{where}.nameservers: expected a list, got {raw!r}")
        else:
            for i, s in enumerate(raw):
                try:
                    servers.append(str(ipaddress.ip_address(s)))
                except (ValueError, TypeError):
                    problems.append(f"{where}.nameservers[{i}]: {s!r} is not an IP address")
    if len(problems) > start:
        return None
    return Network(name, nic, bond, vlan, bridged, mtu, ipv4, ipv6, default_route, custom,
                   tuple(servers))


def parse_bond(name: str, attrs: Mapping[str, Any], problems: list[str]) -> Bond | None:
    where = f"bonding {name}"
    start = len(problems)
    _unknown(attrs, BOND_KEYS, where, problems)
    nics_raw = attrs.get("nics")
    nics: list[str] = []
    if nics_raw is None or (isinstance(nics_raw, list | tuple) and not nics_raw):
        problems.append(f"{where}: a bond needs at least one slave in nics")
    elif not isinstance(nics_raw, list | tuple):
        problems.append(f"{where}.nics: expected a list of NIC names, got {nics_raw!r}")
    else:
        for i, n in enumerate(nics_raw):
            nic = _ifname(n, f"{where}.nics[{i}]", problems)
            if nic is not None:
                if nic in nics:
                    problems.append(f"{where}: nic {nic} listed twice")
                nics.append(nic)
    options = parse_bond_options(attrs.get("options"), f"{where}.options", problems)
    if "primary" in options and options["primary"] not in nics:
        problems.append(f"{where}.options: primary {options['primary']} is not one of its nics")
    switch = attrs.get("switch")
    if switch not in (None, "legacy"):
        problems.append(f"{where}.switch: only 'legacy' is supported, got {switch!r}")
    if len(problems) > start:
        return None
    return Bond(name, tuple(nics), options)


def parse_options(options: object, problems: list[str]) -> Options:
    if options is None:
        return Options()
    if not isinstance(options, Mapping):
        problems.append(f"options: expected a struct, got {options!r}")
        return Options()
    _unknown(options, OPTION_KEYS, "options", problems)
    check = _bool(options.get("connectivityCheck", False), "options.connectivityCheck",
                  problems)
    timeout = _int(options.get("connectivityTimeout", DEFAULT_CONNECTIVITY_TIMEOUT),
                   "options.connectivityTimeout", problems, 1, 3600)
    commit = _bool(options.get("commitOnSuccess", False), "options.commitOnSuccess", problems)
    return Options(bool(check), timeout or DEFAULT_CONNECTIVITY_TIMEOUT, bool(commit))


def config_problems(config: Config, complete: bool = True) -> list[str]:
    """Problems of a whole setup: shared NICs, clashing devices, two default routes.

    `complete=False` for a request alone: its networks may use a bond the host has.
    """
    problems: list[str] = []
    # Who uses each device: a NIC may carry one untagged network and any VLANs, or be a slave.
    untagged: dict[str, str] = {}
    vlans: dict[tuple[str, int], str] = {}
    slaves: dict[str, str] = {}
    for bond in sorted(config.bonds.values(), key=lambda b: b.name):
        if bond.name in config.networks and config.networks[bond.name].bridged:
            problems.append(f"bonding {bond.name}: its name is also a network's bridge")
        for nic in bond.nics:
            if nic in slaves:
                problems.append(f"bonding {bond.name}: nic {nic} is already a slave of "
                                f"{slaves[nic]}")
            elif nic in config.bonds:
                problems.append(f"bonding {bond.name}: slave {nic} is itself a bond")
            else:
                slaves[nic] = f"bonding {bond.name}"
    devices: dict[str, str] = {}
    defaults: list[str] = []
    for net in sorted(config.networks.values(), key=lambda n: n.name):
        where = f"network {net.name}"
        if net.default_route:
            defaults.append(net.name)
        if complete and net.bonding is not None and net.bonding not in config.bonds:
            problems.append(f"{where}: bonding {net.bonding} is not defined")
        if net.nic is not None and net.nic in slaves:
            problems.append(f"{where}: nic {net.nic} is a slave of {slaves[net.nic]}")
        if net.nic is not None and net.nic in config.bonds:
            problems.append(f"{where}: nic {net.nic} is a bond; use bonding")
        base = net.base
        if base is not None:
            if net.vlan is None:
                if base in untagged:
                    problems.append(f"{where}: {base} already carries network "
                                    f"{untagged[base]} untagged (a NIC used twice)")
                else:
                    untagged[base] = net.name
            elif (base, net.vlan) in vlans:
                problems.append(f"{where}: vlan {net.vlan} on {base} is already network "
                                f"{vlans[(base, net.vlan)]}")
            else:
                vlans[(base, net.vlan)] = net.name
        for dev in {net.top, *([net.vlan_device] if net.vlan_device else [])}:
            if dev in devices and devices[dev] != net.name:
                problems.append(f"{where}: device {dev} is also used by {devices[dev]}")
            devices[dev] = net.name
        if net.bridged and (net.name in slaves or net.name in config.bonds):
            problems.append(f"{where}: its bridge name clashes with a bond or a slave")
    for net in config.networks.values():
        if net.bridged and (net.name in untagged or net.name in slaves):
            problems.append(f"network {net.name}: its bridge name is a NIC in use")
    if len(defaults) > 1:
        problems.append(f"networks {', '.join(defaults)}: only one network may have "
                        "defaultRoute")
    return problems


def parse_request(networks: object, bondings: object, options: object) -> Request:
    """VDSM's three setupNetworks arguments -> Request; RequestError names every problem."""
    problems: list[str] = []
    nets: dict[str, Network] = {}
    bonds: dict[str, Bond] = {}
    remove_nets: set[str] = set()
    remove_bonds: set[str] = set()
    for what, raw in (("networks", networks), ("bondings", bondings)):
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            problems.append(f"{what}: expected a struct of NAME: attributes, got {raw!r}")
            continue
        for name, attrs in raw.items():
            kind = "network" if what == "networks" else "bonding"
            if not isinstance(name, str) or not name:
                problems.append(f"{what}: {name!r} is not a {kind} name")
                continue
            if not isinstance(attrs, Mapping):
                problems.append(f"{kind} {name}: expected a struct of attributes, got {attrs!r}")
                continue
            if what == "bondings":
                _ifname(name, f"bonding {name}: the name", problems)
            if _is_remove(attrs, f"{kind} {name}", problems):
                (remove_nets if what == "networks" else remove_bonds).add(name)
            elif what == "networks":
                net = parse_network(name, attrs, problems)
                if net is not None:
                    nets[name] = net
            else:
                bond = parse_bond(name, attrs, problems)
                if bond is not None:
                    bonds[name] = bond
    opts = parse_options(options, problems)
    if not problems:
        # The request on its own must hold together; with the host's setup, in apply.
        problems += config_problems(Config(nets, bonds), complete=False)
    if problems:
        raise RequestError(problems)
    return Request(nets, bonds, frozenset(remove_nets), frozenset(remove_bonds), opts)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """A persisted setup (Config.to_dict) back into records; RequestError if it is damaged."""
    request = parse_request(data.get("networks", {}), data.get("bondings", {}), None)
    return Config(dict(request.networks), dict(request.bonds))
