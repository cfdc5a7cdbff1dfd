"""VLANs and bonds applied for real: these need 8021q and bonding, which this machine's
kernel lacks, so they run inside the tiny guest (tests/net/test_guest.py boots it and
runs this module there, HOOKVISOR_IN_GUEST=1). Without that variable this module is
not collected at all (tests/net/conftest.py), so a run on the host counts no skips
for it: the guest test stands for it."""

from __future__ import annotations

import pytest
from net_support import Namespace, req

from hookvisor.net.apply import ApplyError, apply, execute, plan, rollback
from hookvisor.net.model import Config
from hookvisor.net.report import capabilities


def test_a_vlan_network_on_a_nic(ns: Namespace) -> None:
    ns.veth("eth1")
    nl = ns.netlink()
    before = nl.state().comparable()
    setup = apply(nl, Config(), req({"net1": {"nic": "eth1", "vlan": 10, "mtu": 1400,
                                              "ipaddr": "10.0.0.2", "prefix": 24}}))
    state = nl.state()
    vlan, eth, br = state.link("eth1.10"), state.link("eth1"), state.link("net1")
    assert vlan is not None and eth is not None and br is not None
    assert (vlan.kind, vlan.vlan_id, vlan.link, vlan.master, vlan.mtu, vlan.up) == \
        ("vlan", 10, eth.index, br.index, 1400, True)
    assert eth.mtu == 1400 and eth.master is None
    caps = capabilities(state, setup)
    assert caps["vlans"]["eth1.10"]["iface"] == "eth1"
    assert caps["vlans"]["eth1.10"]["vlanid"] == 10
    assert caps["networks"]["net1"]["vlanid"] == 10
    apply(nl, setup, req({"net1": {"remove": True}}))
    assert nl.state().comparable() == before


def test_vlan_networks_on_a_bond_and_back(ns: Namespace) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    nl = ns.netlink()
    before = nl.state().comparable()
    setup = apply(nl, Config(), req(
        {"net10": {"bonding": "bond0", "vlan": 10, "mtu": 9000},
         "net20": {"bonding": "bond0", "vlan": 20, "bridged": False, "ipaddr": "10.2.0.2",
                   "prefix": 24}},
        {"bond0": {"nics": ["eth1", "eth2"], "options": "mode=1 miimon=100"}}))
    state = nl.state()
    bond = state.link("bond0")
    assert bond is not None and (bond.kind, bond.bond_mode, bond.mtu) == \
        ("bond", "active-backup", 9000)
    assert state.slaves_of("bond0") == ["eth1", "eth2"]
    assert state.link("bond0.10").master == state.link("net10").index  # type: ignore[union-attr]
    assert [(a.address, a.prefix) for a in state.addrs_of("bond0.20")] == [("10.2.0.2", 24)]
    caps = capabilities(state, setup)
    assert caps["bondings"]["bond0"]["slaves"] == ["eth1", "eth2"]
    assert caps["bondings"]["bond0"]["opts"] == {"mode": "1"}
    assert caps["networks"]["net20"]["iface"] == "bond0.20"
    apply(nl, setup, req({"net10": {"remove": True}, "net20": {"remove": True}},
                         {"bond0": {"remove": True}}))
    assert nl.state().comparable() == before


def test_a_slave_vanishing_half_way_rolls_the_bond_back(ns: Namespace) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    ns.veth("eth3")
    nl = ns.netlink()
    setup = apply(nl, Config(), req({"old": {"nic": "eth3", "vlan": 5, "ipaddr": "10.5.0.2",
                                             "prefix": 24}}))
    before = nl.state().comparable()
    p = plan(nl.state(), setup, req(
        {"old": {"remove": True}, "net1": {"bonding": "bond0", "vlan": 7, "mtu": 9000}},
        {"bond0": {"nics": ["eth1", "eth2"], "options": "mode=4"}}))
    steps = p.describe()
    cut = steps.index("enslave eth2 to bond0")
    execute(nl, p.steps[:cut])
    ns.delete("eth2p")  # the slave goes with its peer
    with pytest.raises(ApplyError, match="enslave eth2 to bond0"):
        execute(nl, p.steps[cut:])
    assert rollback(nl, p.steps[:cut]) == []
    expected = {**before, "links": {k: v for k, v in before["links"].items()
                                    if k not in ("eth2", "eth2p")}}
    assert nl.state().comparable() == expected


def test_a_vlan_and_its_bridge_deleted_together_roll_back_in_order(ns: Namespace) -> None:
    ns.veth("eth1")
    ns.veth("eth2")
    nl = ns.netlink()
    setup = apply(nl, Config(), req({"a": {"nic": "eth1", "vlan": 10, "ipaddr": "10.0.0.2",
                                           "prefix": 24}}))
    # New links get no IPv6: the last step is refused by the kernel.
    ns.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    before = nl.state().comparable()
    with pytest.raises(ApplyError, match="add address fd00::2/64 to b"):
        apply(nl, setup, req({"a": {"remove": True},
                              "b": {"nic": "eth2", "vlan": 11, "ipv6addr": "fd00::2/64"}}))
    assert nl.state().comparable() == before


def test_a_bond_mode_change_recreates_the_bond(ns: Namespace) -> None:
    ns.veth("eth1")
    nl = ns.netlink()
    bonds = {"bond0": {"nics": ["eth1"], "options": "mode=1"}}
    setup = apply(nl, Config(), req({}, bonds))
    setup = apply(nl, setup, req({}, {"bond0": {"nics": ["eth1"], "options": "mode=0"}}))
    state = nl.state()
    assert state.link("bond0").bond_mode == "balance-rr"  # type: ignore[union-attr]
    assert state.slaves_of("bond0") == ["eth1"]
