"""setupNetworks dicts -> records: every problem named, nothing half-parsed."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hookvisor.net.model import (
    Config,
    RequestError,
    config_from_dict,
    ifname_problem,
    parse_bond_options,
    parse_request,
)


def problems(networks: Any = None, bondings: Any = None, options: Any = None) -> list[str]:
    with pytest.raises(RequestError) as e:
        parse_request(networks or {}, bondings or {}, options)
    return e.value.problems


def test_a_full_network_parses() -> None:
    req = parse_request(
        {"net1": {"nic": "eth1", "vlan": "10", "bridged": "true", "ipaddr": "10.0.0.2",
                  "netmask": "255.255.255.0", "gateway": "10.0.0.1", "defaultRoute": True,
                  "mtu": 9000, "ipv6addr": "fd00::2/64", "custom": {"speed": 1000}},
         "old": {"remove": True}},
        {"bond0": {"nics": ["eth2", "eth3"], "options": "mode=4 miimon=100"}},
        {"connectivityCheck": "true", "connectivityTimeout": 30})
    net = req.networks["net1"]
    assert (net.vlan, net.vlan_device, net.top, net.mtu) == (10, "eth1.10", "net1", 9000)
    assert net.ipv4 is not None and (net.ipv4.prefix, net.ipv4.gateway) == (24, "10.0.0.1")
    assert net.ipv6 is not None and net.ipv6.cidr == "fd00::2/64"
    assert net.custom == {"speed": "1000"}
    assert req.remove_networks == {"old"}
    assert req.bonds["bond0"].options == {"mode": "802.3ad", "miimon": "100"}
    assert req.options.connectivity_check and req.options.connectivity_timeout == 30


def test_bridgeless_network_lives_on_its_port() -> None:
    net = parse_request({"n": {"nic": "eth1", "vlan": 5, "bridged": False}}, {}, None) \
        .networks["n"]
    assert net.top == "eth1.5"


@pytest.mark.parametrize(("networks", "bondings", "expected"), [
    ({"n": {"nic": "eth1", "colour": "red"}}, {}, "network n: unknown key(s) colour"),
    ({"n": {"nic": "eth1", "vlan": 0}}, {}, "network n.vlan: 0 is out of range 1..4094"),
    ({"n": {"nic": "eth1", "vlan": 4095}}, {}, "network n.vlan: 4095 is out of range"),
    ({"n": {"nic": "eth1", "vlan": True}}, {}, "network n.vlan: expected an integer"),
    ({"n": {"nic": "eth1", "mtu": 67}}, {}, "network n.mtu: 67 is out of range 68..65535"),
    ({"n": {"nic": "eth1", "mtu": "big"}}, {}, "network n.mtu: expected an integer"),
    ({"n": {"nic": "eth/1"}}, {}, "network n.nic: 'eth/1' is not a valid interface name"),
    ({"n": {"nic": "eth 1"}}, {}, "contains ' '"),
    ({"a-very-long-network-name": {"nic": "eth1"}}, {}, "longer than 15 bytes"),
    ({"n": {"nic": "eth1"}, "m": {"nic": "eth1"}}, {}, "a NIC used twice"),
    ({"n": {"nic": "eth1", "vlan": 3}, "m": {"nic": "eth1", "vlan": 3}}, {},
     "vlan 3 on eth1 is already network"),
    ({}, {"bond0": {"nics": []}}, "bonding bond0: a bond needs at least one slave"),
    ({}, {"bond0": {"options": "mode=1"}}, "a bond needs at least one slave"),
    ({}, {"bond0": {"nics": ["eth1"], "options": "mode=9"}}, "unknown bond mode '9'"),
    ({}, {"bond0": {"nics": ["eth1"], "options": "speed=9"}}, "unknown bond option 'speed'"),
    ({}, {"b0": {"nics": ["eth1"]}, "b1": {"nics": ["eth1"]}}, "already a slave of bonding b0"),
    ({"n": {"nic": "eth1"}}, {"b0": {"nics": ["eth1"]}}, "nic eth1 is a slave of bonding b0"),
    ({"n": {"remove": True, "nic": "eth1"}}, {}, "remove cannot be combined with nic"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.300", "netmask": "255.255.255.0"}}, {},
     "network n.ipaddr: '10.0.0.300' is not an IPv4 address"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.2"}}, {}, "ipaddr needs a netmask or a prefix"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.2", "netmask": "255.0.255.0"}}, {},
     "is not a netmask"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.2", "netmask": "255.255.255.0", "prefix": 16}},
     {}, "netmask 255.255.255.0 and prefix 16 disagree"),
    ({"n": {"nic": "eth1", "netmask": "255.255.255.0"}}, {}, "netmask given without ipaddr"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.2", "prefix": 24, "gateway": "10.9.0.1"}}, {},
     "network n.gateway: 10.9.0.1 is not in 10.0.0.0/24"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.0", "prefix": 24}}, {},
     "is the network or broadcast address"),
    ({"n": {"nic": "eth1", "ipv6addr": "fd00::1"}}, {}, "expected ADDRESS/PREFIX"),
    ({"n": {"nic": "eth1", "ipv6addr": "10.0.0.1/24"}}, {}, "is not an IPv6 address"),
    ({"n": {"nic": "eth1", "ipv6addr": "fd00::1/64", "mtu": 1000}}, {},
     "IPv6 needs an mtu of at least 1280"),
    ({"n": {"nic": "eth1", "defaultRoute": True}}, {}, "defaultRoute needs a gateway"),
    ({"n": {"nic": "eth1", "ipaddr": "10.0.0.2", "prefix": 24, "gateway": "10.0.0.1",
            "defaultRoute": True},
      "m": {"nic": "eth2", "ipaddr": "10.1.0.2", "prefix": 24, "gateway": "10.1.0.1",
            "defaultRoute": True}}, {}, "only one network may have defaultRoute"),
    ({"n": {"nic": "eth1", "bootproto": "dhcp"}}, {}, "only 'none' (static) is supported"),
    ({"n": {"bridged": False}}, {}, "a bridgeless network needs a nic or a bonding"),
    ({"n": {"vlan": 4}}, {}, "a vlan needs a nic or a bonding"),
    ({"n": {"nic": "eth1", "bonding": "b0"}}, {}, "nic and bonding are exclusive"),
    ({"n": {"nic": "eth1", "custom": "x"}}, {}, "network n.custom: expected a struct"),
    ({"n": "eth1"}, {}, "network n: expected a struct of attributes"),
    ({"n": {"nic": "verylongnicname", "vlan": 100}}, {}, "the vlan device name"),
])
def test_each_problem_is_named(networks: Any, bondings: Any, expected: str) -> None:
    found = problems(networks, bondings)
    assert any(expected in p for p in found), found


def test_every_problem_at_once() -> None:
    found = problems({"a": {"nic": "eth1", "vlan": 0}, "b": {"nic": "x/y", "mtu": 1}},
                     {"bond0": {"nics": []}}, {"connectivityTimeout": -1})
    assert len(found) == 5, found


def test_options_are_checked() -> None:
    assert any("options: unknown key(s) foo" in p for p in problems(options={"foo": 1}))
    assert any("options.connectivityTimeout" in p
               for p in problems(options={"connectivityTimeout": 0}))


def test_merge_replaces_a_network_whole_and_removes() -> None:
    current = Config({}, {})
    first = parse_request({"n": {"nic": "eth1", "mtu": 9000}, "m": {"nic": "eth2"}}, {}, None)
    setup = first.merged(current)
    second = parse_request({"n": {"nic": "eth1"}, "m": {"remove": True}}, {}, None)
    after = second.merged(setup)
    assert set(after.networks) == {"n"} and after.networks["n"].mtu is None


def test_a_setup_round_trips_through_its_dict() -> None:
    req = parse_request(
        {"n": {"bonding": "bond0", "vlan": 7, "ipaddr": "192.168.1.5", "prefix": 24,
               "gateway": "192.168.1.1", "defaultRoute": True, "ipv6addr": "fd00::5/64",
               "custom": {"k": "v"}, "nameservers": ["8.8.8.8"]}},
        {"bond0": {"nics": ["eth1", "eth2"], "options": "mode=1 miimon=100"}}, None)
    setup = req.merged(Config())
    assert config_from_dict(setup.to_dict()) == setup


def test_a_request_using_a_bond_it_does_not_define_is_left_to_the_host_check() -> None:
    parse_request({"n": {"bonding": "bond0"}}, {}, None)


@given(st.text(max_size=20))
def test_ifname_rules_match_the_kernel(name: str) -> None:
    why = ifname_problem(name)
    valid = (0 < len(name.encode()) <= 15 and name not in (".", "..")
             and not any(c in "/:" or c.isspace() or not c.isprintable() for c in name))
    assert (why is None) == valid, (name, why)


@given(st.integers(min_value=-10, max_value=5000))
def test_vlan_range(vlan: int) -> None:
    nets = {"n": {"nic": "eth1", "vlan": vlan}}
    if 1 <= vlan <= 4094:
        assert parse_request(nets, {}, None).networks["n"].vlan == vlan
    else:
        assert any("out of range 1..4094" in p for p in problems(nets))


@given(st.integers(min_value=-100, max_value=70000))
def test_mtu_range(mtu: int) -> None:
    nets = {"n": {"nic": "eth1", "mtu": mtu}}
    if 68 <= mtu <= 65535:
        assert parse_request(nets, {}, None).networks["n"].effective_mtu == mtu
    else:
        assert problems(nets)


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
def test_ipv4_address_and_prefix(address: ipaddress.IPv4Address, prefix: int) -> None:
    nets = {"n": {"nic": "eth1", "ipaddr": str(address), "prefix": prefix}}
    net = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    ok = (0 < prefix < 32 and not address.is_unspecified and not address.is_multicast
          and str(address) != "255.255.255.255"
          and (prefix == 31 or address not in (net.network_address, net.broadcast_address)))
    if ok:
        parsed = parse_request(nets, {}, None).networks["n"].ipv4
        assert parsed is not None and (parsed.address, parsed.prefix) == (str(address), prefix)
    else:
        assert problems(nets)


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.booleans(),
                                                       st.integers(), st.text(max_size=8)),
                       max_size=5))
def test_any_attributes_parse_or_name_a_problem(attrs: dict[str, Any]) -> None:
    try:
        parse_request({"n": attrs}, {}, None)
    except RequestError as e:
        assert e.problems and all(p.startswith(("network n", "networks")) for p in e.problems)


@given(st.text(max_size=40))
def test_bond_options_never_raise(text: str) -> None:
    found: list[str] = []
    parse_bond_options(text, "b", found)
    assert all(p.startswith("b") for p in found)
