"""The planner on its own (pure): VLAN and bond setups, which this machine's kernel cannot
build, planned against a state as netlink reports it. Applied for real in the tiny guest."""

from __future__ import annotations

import pytest
from net_support import req

from hookvisor.net.apply import PlanError, plan
from hookvisor.net.model import Config
from hookvisor.net.netlink import Link, State


def nic(index: int, name: str, mtu: int = 1500, up: bool = True,
        master: int | None = None) -> Link:
    return Link(index, name, None, mtu, 68, 9000, master, up, f"52:54:00:00:00:{index:02x}")


HOST = State(links=(nic(2, "eth1"), nic(3, "eth2"), nic(4, "eth3")), addrs=(), routes=())




def test_a_vlan_network_on_a_bond_in_order() -> None:
    p = plan(HOST, Config(), req(
        {"net1": {"bonding": "bond0", "vlan": 10, "mtu": 9000, "ipaddr": "10.0.0.2",
                  "prefix": 24}},
        {"bond0": {"nics": ["eth1", "eth2"], "options": "mode=4 miimon=100"}}))
    assert p.describe() == [
        "create bond bond0", "create vlan bond0.10", "create bridge net1",
        "set eth1 down to join bond0", "enslave eth1 to bond0",
        "set eth2 down to join bond0", "enslave eth2 to bond0",
        "enslave bond0.10 to net1",
        # raised from the bottom up: slaves, bond, vlan, bridge
        "set mtu 9000 on eth1", "set mtu 9000 on eth2", "set mtu 9000 on bond0",
        "set mtu 9000 on bond0.10", "set mtu 9000 on net1",
        "set eth1 up", "set eth2 up", "set bond0 up", "set bond0.10 up", "set net1 up",
        "add address 10.0.0.2/24 to net1",
    ]
    create_bond = p.steps[0]
    assert create_bond.args == ("bond0", {"mode": "802.3ad", "miimon": "100"})
    assert [u.text for u in create_bond.undo] == ["delete bond bond0"]


def test_two_vlans_and_an_untagged_network_share_a_nic() -> None:
    p = plan(HOST, Config(), req({
        "a": {"nic": "eth1", "vlan": 10, "mtu": 9000},
        "b": {"nic": "eth1", "vlan": 20, "bridged": False, "mtu": 1400},
        "c": {"nic": "eth1"}}))
    steps = p.describe()
    assert "set mtu 9000 on eth1" in steps  # the largest of its networks
    assert steps.index("set mtu 9000 on eth1") < steps.index("set mtu 9000 on eth1.10")
    assert {"create vlan eth1.10", "create vlan eth1.20", "enslave eth1 to c",
            "enslave eth1.10 to a"} <= set(steps)
    assert "create bridge b" not in steps


def test_lowering_mtus_goes_from_the_top_down() -> None:
    first = req({"a": {"nic": "eth1", "vlan": 10, "mtu": 9000}})
    setup = first.merged(Config())
    state = State(links=(nic(2, "eth1", 9000),
                         Link(5, "eth1.10", "vlan", 9000, 68, 9000, 6, True, "x", 10, 2),
                         Link(6, "a", "bridge", 9000, 68, 65535, None, True, "y")),
                  addrs=(), routes=())
    p = plan(state, setup, req({"a": {"nic": "eth1", "vlan": 10, "mtu": 1500}}))
    assert p.describe() == ["set mtu 1500 on a", "set mtu 1500 on eth1.10",
                            "set mtu 1500 on eth1"]
    assert [u.text for s in p.steps for u in s.undo] == [
        "set mtu 9000 on a", "set mtu 9000 on eth1.10", "set mtu 9000 on eth1"]


def test_moving_a_vlan_recreates_it_and_the_undo_rebuilds_the_old_one() -> None:
    setup = req({"a": {"nic": "eth1", "vlan": 10}}).merged(Config())
    state = State(links=(nic(2, "eth1"), nic(3, "eth2"),
                         Link(5, "eth1.10", "vlan", 1500, 68, 9000, 6, True, "aa", 10, 2),
                         Link(6, "a", "bridge", 1500, 68, 65535, None, True, "bb")),
                  addrs=(), routes=())
    p = plan(state, setup, req({"a": {"nic": "eth2", "vlan": 10}}))
    steps = p.describe()
    assert steps[:2] == ["release eth1.10 from a", "delete vlan eth1.10"]
    assert "create vlan eth2.10" in steps and "create bridge a" not in steps
    delete = p.steps[1]
    assert [u.text for u in delete.undo] == ["re-create vlan eth1.10", "set mtu 1500 on eth1.10",
                                             "set eth1.10 up"]
    assert delete.undo[0].args == ("eth1.10", "eth1", 10)


def test_removing_a_bond_releases_its_slaves() -> None:
    setup = req({}, {"bond0": {"nics": ["eth1", "eth2"], "options": "mode=1"}}).merged(Config())
    state = State(links=(nic(2, "eth1", master=7), nic(3, "eth2", master=7),
                         Link(7, "bond0", "bond", 1500, 68, 65535, None, True, "cc",
                              bond_mode="active-backup")),
                  addrs=(), routes=())
    p = plan(state, setup, req({}, {"bond0": {"remove": True}}))
    assert p.describe() == ["release eth1 from bond0", "release eth2 from bond0",
                            "delete bond bond0", "set eth1 up", "set eth2 up"]
    assert p.steps[2].undo[0].args == ("bond0", {"mode": "active-backup"}, "cc")


def test_a_bond_in_use_cannot_be_removed() -> None:
    setup = req({"n": {"bonding": "bond0"}},
                {"bond0": {"nics": ["eth1"]}}).merged(Config())
    with pytest.raises(PlanError, match="network n: bonding bond0 is not defined"):
        plan(HOST, setup, req({}, {"bond0": {"remove": True}}))


def test_a_vlan_above_what_its_nic_can_take_is_refused() -> None:
    with pytest.raises(PlanError, match="mtu 9500 is out of what eth1 can take"):
        plan(HOST, Config(), req({"a": {"nic": "eth1", "vlan": 10, "mtu": 9500}}))


def test_a_slave_leaving_a_bond_is_set_up_again() -> None:
    setup = req({}, {"bond0": {"nics": ["eth1"], "options": "mode=1"}}).merged(Config())
    state = State(links=(nic(2, "eth1", master=7),
                         Link(7, "bond0", "bond", 1500, 68, 65535, None, True, "cc",
                              bond_mode="active-backup")),
                  addrs=(), routes=())
    p = plan(state, setup, req({}, {"bond0": {"remove": True}}))
    assert p.describe() == ["release eth1 from bond0", "delete bond bond0", "set eth1 up"]
