"""Plan and apply on the real kernel, inside a namespace per test; rollback to the exact state."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from net_support import Namespace, req

from hookvisor.net.apply import ApplyError, PlanError, apply, execute, plan
from hookvisor.net.model import Config
from hookvisor.net.netlink import Netlink, NetlinkFailure

NET1 = {"nic": "eth1", "ipaddr": "10.0.0.2", "netmask": "255.255.255.0",
        "gateway": "10.0.0.1", "defaultRoute": True, "mtu": 1400}


def test_netlink_reads_and_changes_a_namespace(ns: Namespace) -> None:
    ns.veth("eth1", mtu=9000)
    nl = ns.netlink()
    nl.add_bridge("br0")
    nl.set_master("eth1", "br0")
    nl.set_mtu("br0", 1280)
    nl.set_up("br0", True)
    nl.add_addr("br0", "192.0.2.5", 24)
    nl.add_addr("br0", "fd00::5", 64)
    state = nl.state()
    br, eth = state.link("br0"), state.link("eth1")
    assert br is not None and eth is not None
    assert (br.kind, br.mtu, br.up) == ("bridge", 1280, True)
    assert (eth.master, eth.mtu, eth.max_mtu) == (br.index, 9000, 65535)
    assert {(a.address, a.prefix) for a in state.addrs_of("br0")} == \
        {("192.0.2.5", 24), ("fd00::5", 64)}
    assert state.slaves_of("br0") == ["eth1"]
    nl.del_addr("br0", "192.0.2.5", 24)
    nl.delete_link("br0")
    after = nl.state()
    assert after.link("br0") is None and after.link("eth1").master is None  # type: ignore[union-attr]


def test_netlink_names_the_call_that_failed(ns: Namespace) -> None:
    nl = ns.netlink()
    with pytest.raises(NetlinkFailure, match="set mtu 1400 on nope: no such device"):
        nl.set_mtu("nope", 1400)
    nl.add_bridge("br0")
    with pytest.raises(NetlinkFailure, match=r"create bridge br0: .*exists"):
        nl.add_bridge("br0")


def test_a_missing_namespace_is_not_created() -> None:
    from pathlib import Path

    name = "hvtest-missing-ns"
    with pytest.raises(NetlinkFailure, match="network namespace 'hvtest-missing-ns' does not"):
        Netlink(name)
    assert not Path("/var/run/netns", name).exists()


def test_this_kernel_has_no_vlans_so_the_vlan_call_fails_cleanly(ns: Namespace) -> None:
    ns.veth("eth1")
    nl = ns.netlink()
    try:
        nl.add_vlan("eth1.10", "eth1", 10)
    except NetlinkFailure as e:
        assert "create vlan eth1.10" in str(e)
    else:  # a kernel with 8021q: it worked, and reads back
        assert nl.state().link("eth1.10").vlan_id == 10  # type: ignore[union-attr]


def test_a_bridged_network_is_applied_and_removed(ns: Namespace) -> None:
    ns.veth("eth1")
    nl = ns.netlink()
    before = nl.state().comparable()
    setup = apply(nl, Config(), req({"net1": NET1}))
    state = nl.state()
    br, eth = state.link("net1"), state.link("eth1")
    assert br is not None and eth is not None
    assert (br.kind, br.mtu, br.up, eth.master, eth.mtu) == ("bridge", 1400, True, br.index,
                                                            1400)
    assert [(a.address, a.prefix) for a in state.addrs_of("net1")] == [("10.0.0.2", 24)]
    defaults = [r for r in state.routes if r.dst is None and r.family == 2]
    assert [(r.gateway, state.name_of(r.oif)) for r in defaults] == [("10.0.0.1", "net1")]
    apply(nl, setup, req({"net1": {"remove": True}}))
    assert nl.state().comparable() == before


def test_editing_a_network_changes_only_what_differs(ns: Namespace) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    nl = ns.netlink()
    setup = apply(nl, Config(), req({"net1": NET1}))
    index = nl.state().link("net1").index  # type: ignore[union-attr]
    edit = {**NET1, "nic": "eth2", "mtu": 1500, "ipaddr": "10.0.0.3"}
    p = plan(nl.state(), setup, req({"net1": edit}))
    assert "create bridge net1" not in p.describe()
    execute(nl, p.steps)
    state = nl.state()
    assert state.link("net1").index == index  # type: ignore[union-attr]
    assert state.slaves_of("net1") == ["eth2"]
    assert state.link("eth1").mtu == 1500  # type: ignore[union-attr]
    assert [(a.address, a.prefix) for a in state.addrs_of("net1")] == [("10.0.0.3", 24)]


def test_a_bridgeless_network_puts_its_address_on_the_nic(ns: Namespace) -> None:
    ns.veth("eth1")
    nl = ns.netlink()
    before = nl.state().comparable()
    setup = apply(nl, Config(), req({"n": {"nic": "eth1", "bridged": False, "ipaddr": "10.5.0.2",
                                           "prefix": 16, "mtu": 1300}}))
    state = nl.state()
    assert [(a.address, a.prefix) for a in state.addrs_of("eth1")] == [("10.5.0.2", 16)]
    assert state.link("eth1").mtu == 1300  # type: ignore[union-attr]
    apply(nl, setup, req({"n": {"remove": True}}))
    assert nl.state().comparable() == before


def test_a_default_route_replaces_the_hosts_and_a_failure_puts_it_back(ns: Namespace) -> None:
    ns.veth("eth0")
    ns.veth("eth1")
    nl = ns.netlink()
    nl.add_addr("eth0", "172.16.0.2", 24)
    ns.run("ip", "route", "add", "default", "via", "172.16.0.1")
    before = nl.state().comparable()
    # The step after the route removal fails: IPv6 is off for links made from now on.
    ns.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    with pytest.raises(ApplyError, match="add address fd00::2/64 to net1"):
        apply(nl, Config(), req({"net1": {**NET1, "ipv6addr": "fd00::2/64"}}))
    assert nl.state().comparable() == before
    setup = apply(nl, Config(), req({"net1": NET1}))
    state = nl.state()
    assert [(r.gateway, state.name_of(r.oif)) for r in state.routes
            if r.dst is None and r.family == 2] == [("10.0.0.1", "net1")]
    # Removing the network takes its route; the host's old one is not resurrected (VDSM).
    apply(nl, setup, req({"net1": {"remove": True}}))
    assert not [r for r in nl.state().routes if r.dst is None and r.family == 2]


@pytest.mark.parametrize("when", ["enslave eth2 to net2", "add address 10.9.0.2/24 to net2"])
def test_a_nic_vanishing_between_plan_and_apply_rolls_everything_back(
        ns: Namespace, when: str) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    ns.veth("eth3")
    nl = ns.netlink()
    setup = apply(nl, Config(), req({"old": {"nic": "eth3", "ipaddr": "10.7.0.2", "prefix": 24,
                                             "gateway": "10.7.0.1", "defaultRoute": True,
                                             "mtu": 1450}}))
    before = nl.state().comparable()
    request = req({"old": {"remove": True},
                   "net1": NET1,
                   "net2": {"nic": "eth2", "ipaddr": "10.9.0.2", "prefix": 24, "mtu": 9000}})
    p = plan(nl.state(), setup, request)
    done = p.describe()
    assert when in done
    # The device the failing step needs vanishes after the plan; steps before it ran.
    victim = "eth2" if when.startswith("enslave") else "net2"
    cut = done.index(when)
    execute(nl, p.steps[:cut])
    assert nl.state().comparable() != before
    ns.delete(victim if victim != "eth2" else "eth2p")
    with pytest.raises(ApplyError) as e:
        execute(nl, p.steps[cut:])
    assert when in str(e.value) and "rolled back" in str(e.value)
    # Roll back the first half too (execute's journal covered only its own steps).
    from hookvisor.net.apply import rollback
    assert rollback(nl, p.steps[:cut]) == []
    after = nl.state().comparable()
    expected = before
    if victim == "eth2":  # the vanished pair is gone from both sides of the comparison
        expected = {**before, "links": {k: v for k, v in before["links"].items()
                                        if k not in ("eth2", "eth2p")}}
    else:
        assert victim not in after["links"]
    assert after == expected


def test_an_address_the_kernel_refuses_rolls_back_to_the_exact_state(ns: Namespace) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    nl = ns.netlink()
    setup = apply(nl, Config(), req({"keep": {"nic": "eth2", "ipaddr": "10.3.0.2", "prefix": 24,
                                              "gateway": "10.3.0.1", "defaultRoute": True}}))
    # New links get no IPv6: the kernel refuses an IPv6 address on them.
    ns.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    before = nl.state().comparable()
    request = req({"keep": {"remove": True},
                   "net1": {"nic": "eth1", "ipaddr": "10.0.0.2", "prefix": 24, "mtu": 1400,
                            "ipv6addr": "fd00::2/64", "gateway": "10.0.0.1",
                            "defaultRoute": True}})
    with pytest.raises(ApplyError) as e:
        apply(nl, setup, request)
    assert "add address fd00::2/64 to net1" in str(e.value)
    assert "rolled back" in str(e.value)
    assert nl.state().comparable() == before


@pytest.mark.parametrize(("networks", "message"), [
    ({"n": {"nic": "eth9"}}, "network n: nic eth9 does not exist on the host"),
    ({"n": {"nic": "eth1", "mtu": 9000}}, "network n: mtu 9000 is out of what eth1 can take"),
    ({"n": {"nic": "br-x"}}, "network n: br-x is a bridge, not a NIC"),
    ({"br-x": {"nic": "eth1"}}, "device br-x already exists on the host (bridge)"),
    ({"n": {"remove": True}}, "network n: not configured here, cannot remove it"),
    ({"n": {"bonding": "bond0"}}, "network n: bonding bond0 is not defined"),
    ({"n": {"nic": "eth2"}}, "nic eth2 is already enslaved to br-x"),
])
def test_checked_against_the_host_before_anything_is_touched(
        ns: Namespace, networks: Any, message: str) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    nl = ns.netlink()
    # veth's max_mtu is 65535: a cap as a real NIC has, through the kernel's own check.
    nl.add_bridge("br-x")
    nl.set_master("eth2", "br-x")
    before = nl.state()
    snapshot = before
    if "9000" in message:
        # No link type here caps its MTU below 65535 (veth, bridge, macvlan do not),
        # so the read state is given a NIC's cap, as a 1500-only card reports it.
        capped = dataclasses.replace(before.link("eth1"), max_mtu=1500)  # type: ignore[type-var]
        snapshot = dataclasses.replace(
            before, links=tuple(capped if x.name == "eth1" else x for x in before.links))
    with pytest.raises(PlanError) as e:
        execute(nl, plan(snapshot, Config(), req(networks)).steps)
    assert any(message in p for p in e.value.problems), e.value.problems
    assert nl.state().comparable() == before.comparable()


def test_a_plan_reads_nothing_twice(ns: Namespace) -> None:
    """Undo steps are fixed at plan time; the same plan against the same state is the same."""
    ns.veth("eth1")
    nl: Netlink = ns.netlink()
    state = nl.state()
    assert plan(state, Config(), req({"net1": NET1})) == plan(state, Config(), req({"net1": NET1}))


def test_ipv6_address_and_default_route(ns: Namespace) -> None:
    ns.veth("eth1")
    nl = ns.netlink()
    before = nl.state().comparable()
    setup = apply(nl, Config(), req({"net6": {"nic": "eth1", "ipv6addr": "fd00:1::2/64",
                                              "ipv6gateway": "fd00:1::1",
                                              "defaultRoute": True}}))
    state = nl.state()
    assert [(a.address, a.prefix) for a in state.addrs_of("net6")] == [("fd00:1::2", 64)]
    defaults = [(r.gateway, state.name_of(r.oif)) for r in state.routes
                if r.dst is None and r.family == 10]
    assert defaults == [("fd00:1::1", "net6")]
    apply(nl, setup, req({"net6": {"remove": True}}))
    assert nl.state().comparable() == before
