"""Benchmark: setupNetworks through the agent's network service against bare pyroute2.

In a network namespace of its own (never the host's interfaces), with 20 veth
pairs standing for NICs: apply 20 bridged networks (one per NIC, MTU 1400, an
address each), then remove them all; once through `NetworkService.setup` (no
hooks installed; parse, plan, journal, persistence included) and once as the
same netlink calls made directly on one pyroute2 IPRoute socket. The two sides
alternate round by round, each going first every other round.

The issue asks for 20 VLAN networks on a bond: `--vlans-on-bond` does that
(bridged VLANs 100.. on a two-slave active-backup bond), but this machine's
kernel has neither VLANs nor bonding, so it runs inside the tiny guest
(tests/guest.py, its virtiofs flavour; under TCG: the ratio, not the times, is
what it tells).
By default bridges on NICs stand in (same planner, same kinds of steps:
create, enslave, MTU, up, address).

Last line: network_overhead_ratio=X.XX (median agent round / median direct round).
Usage (root): .venv/bin/python bench/network.py [--rounds N] [--networks N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from hookvisor.agent.hookcalls import HookCalls
from hookvisor.agent.network import NetworkService
from hookvisor.hooks.runner import HookRunner, RunnerConfig
from hookvisor.net.persist import NetStore
from hookvisor.props.registry import PropertyRegistry


def request(count: int) -> dict[str, Any]:
    return {f"net{i}": {"nic": f"eth{i}", "mtu": 1400, "ipaddr": f"10.{i}.0.2",
                        "prefix": 24} for i in range(count)}


def vlan_request(count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    nets = {f"net{i}": {"bonding": "bond0", "vlan": 100 + i, "mtu": 1400,
                        "ipaddr": f"10.{i}.0.2", "prefix": 24} for i in range(count)}
    return nets, {"bond0": {"nics": ["eth0", "eth1"], "options": "mode=1 miimon=100"}}


def direct_vlan_round(ipr: Any, count: int) -> float:
    """The agent's calls for VLAN networks on a bond, on one socket."""
    t0 = time.perf_counter()
    slaves = [ipr.link_lookup(ifname=n)[0] for n in ("eth0", "eth1")]
    ipr.link("add", ifname="bond0", kind="bond", bond_mode=1, bond_miimon=100)
    bond = ipr.link_lookup(ifname="bond0")[0]
    vlans, bridges = {}, {}
    for i in range(count):
        ipr.link("add", ifname=f"bond0.{100 + i}", kind="vlan", link=bond, vlan_id=100 + i)
        vlans[i] = ipr.link_lookup(ifname=f"bond0.{100 + i}")[0]
    for i in range(count):
        ipr.link("add", ifname=f"net{i}", kind="bridge")
        bridges[i] = ipr.link_lookup(ifname=f"net{i}")[0]
    for idx in slaves:
        ipr.link("set", index=idx, state="down")
        ipr.link("set", index=idx, master=bond)
    for i in range(count):
        ipr.link("set", index=vlans[i], master=bridges[i])
    for idx in (*slaves, bond):
        ipr.link("set", index=idx, mtu=1400)
    for i in range(count):
        ipr.link("set", index=vlans[i], mtu=1400)
        ipr.link("set", index=bridges[i], mtu=1400)
    for idx in (*slaves, bond, *vlans.values(), *bridges.values()):
        ipr.link("set", index=idx, state="up")
    for i in range(count):
        ipr.addr("add", index=bridges[i], address=f"10.{i}.0.2", prefixlen=24)
    for i in range(count):
        ipr.addr("del", index=bridges[i], address=f"10.{i}.0.2", prefixlen=24)
    for idx in (*slaves, *vlans.values()):
        ipr.link("set", index=idx, master=0)
    for i in range(count):
        ipr.link("del", index=bridges[i])
    for i in range(count):
        ipr.link("del", index=vlans[i])
    ipr.link("del", index=bond)
    for idx in slaves:
        ipr.link("set", index=idx, mtu=1500)
        ipr.link("set", index=idx, state="up")
    return time.perf_counter() - t0


def agent_vlan_round(service: NetworkService, count: int) -> float:
    t0 = time.perf_counter()
    nets, bonds = vlan_request(count)
    service.setup(nets, bonds, {})
    service.setup({name: {"remove": True} for name in nets}, {"bond0": {"remove": True}}, {})
    return time.perf_counter() - t0


def direct_round(ipr: Any, count: int) -> float:
    """The calls the agent makes, on one socket, indexes looked up once per link."""
    t0 = time.perf_counter()
    nics = {f"eth{i}": ipr.link_lookup(ifname=f"eth{i}")[0] for i in range(count)}
    bridges = {}
    for i in range(count):
        ipr.link("add", ifname=f"net{i}", kind="bridge")
        bridges[i] = ipr.link_lookup(ifname=f"net{i}")[0]
        ipr.link("set", index=nics[f"eth{i}"], master=bridges[i])
    for i in range(count):
        ipr.link("set", index=nics[f"eth{i}"], mtu=1400)
        ipr.link("set", index=bridges[i], mtu=1400)
    for i in range(count):
        ipr.link("set", index=bridges[i], state="up")
        ipr.addr("add", index=bridges[i], address=f"10.{i}.0.2", prefixlen=24)
    for i in range(count):
        ipr.addr("del", index=bridges[i], address=f"10.{i}.0.2", prefixlen=24)
        ipr.link("set", index=nics[f"eth{i}"], master=0)
        ipr.link("del", index=bridges[i])
        ipr.link("set", index=nics[f"eth{i}"], mtu=1500)
    return time.perf_counter() - t0


def agent_round(service: NetworkService, count: int) -> float:
    t0 = time.perf_counter()
    service.setup(request(count), {}, {})
    service.setup({f"net{i}": {"remove": True} for i in range(count)}, {}, {})
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--networks", type=int, default=20)
    parser.add_argument("--vlans-on-bond", action="store_true",
                        help="VLAN networks on a bond (needs 8021q and bonding: the tiny guest)")
    args = parser.parse_args()
    agent_side, direct_side = agent_round, direct_round
    if args.vlans_on_bond:
        agent_side, direct_side = agent_vlan_round, direct_vlan_round
    name = f"hvtest-bench-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="hookvisor-netbench-"))
    netns.create(name)
    try:
        ipr = IPRoute(netns=name)
        for i in range(2 if args.vlans_on_bond else args.networks):
            ipr.link("add", ifname=f"eth{i}", kind="veth", peer=f"eth{i}p")
            ipr.link("set", index=ipr.link_lookup(ifname=f"eth{i}")[0], state="up")
        (work / "hooks").mkdir()
        (work / "run").mkdir()
        props = PropertyRegistry(work / "properties.sqlite", "4.8")
        runner = HookRunner(RunnerConfig(hooks_dir=work / "hooks", run_dir=work / "run"))
        service = NetworkService(HookCalls(runner), props, NetStore(work / "net"), name)
        agent: list[float] = []
        direct: list[float] = []
        for r in range(args.rounds):
            if r % 2:
                agent.append(agent_side(service, args.networks))
                direct.append(direct_side(ipr, args.networks))
            else:
                direct.append(direct_side(ipr, args.networks))
                agent.append(agent_side(service, args.networks))
        ipr.close()
        props.close()
        a, d = statistics.median(agent), statistics.median(direct)
        what = "VLAN networks on a bond" if args.vlans_on_bond else "bridged networks"
        print(f"{args.networks} {what} applied + removed, {args.rounds} rounds "
              f"(namespace {name}):")
        print(f"  through the agent (NetworkService.setup x2): {a * 1000:.1f} ms")
        print(f"  direct pyroute2 calls:                       {d * 1000:.1f} ms")
        print(f"network_overhead_ratio={a / d:.2f}")
    finally:
        netns.remove(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
