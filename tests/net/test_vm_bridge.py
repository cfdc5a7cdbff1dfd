"""A VM created with `network: NAME` on qemu:///system gets its tap enslaved to bridge NAME.

Never in the host's own network namespace: the test's namespace gets a libvirtd
of its own (scripts/libvirtd2.sh with HOOKVISOR_LIBVIRTD2_NETNS: a private
/run/libvirt, /etc/libvirt, ... in a mount namespace, run under `ip netns exec`),
so the taps QEMU gets are made there and join that namespace's bridges. The agent
runs on the host and reaches that daemon through its Unix socket
(qemu+unix:///system?socket=...): a socket is a file, reachable from any network
namespace. The agent's `net_netns` is the same namespace: setupNetworks makes the
bridge there, on a veth standing for a NIC.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from guest import start_second_host, stop_second_host
from net_support import Namespace
from support import destroy_leftovers, unavailable

pytestmark = pytest.mark.libvirtd

NET = "hvnet1"


@pytest.fixture
def ns_libvirtd(ns: Namespace) -> Iterator[str]:
    """The URI of a libvirtd running inside `ns`; stopped (its domains destroyed) after."""
    # Short: the socket's path (DIR/sock/libvirt-sock) must fit in 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="hvtest-lv-", dir="/var/tmp"))
    try:
        try:
            uri = start_second_host(directory, ns.name)
        except RuntimeError as e:
            unavailable(f"libvirtd in network namespace {ns.name}: {e}")
            raise
        try:
            yield uri
            leaked = destroy_leftovers(uri)
            assert not leaked, f"test left domains behind on {uri}: {leaked}"
        finally:
            stop_second_host(directory, ns.name)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _tap(uri: str, vm_id: str) -> str:
    """The VM's tap device, from the live XML's <interface><target dev>."""
    conn = libvirt.open(uri)
    try:
        root = ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc(0))
    finally:
        conn.close()
    [target] = root.findall("devices/interface/target")
    return target.get("dev") or ""


def test_a_vm_nic_on_network_name_joins_that_bridge(
        ns: Namespace, ns_libvirtd: str, inproc_agent: Callable[..., Any]) -> None:
    started = time.monotonic()
    ns.veth("eth1")
    agent = inproc_agent(ns_libvirtd, net_netns=ns.name)
    api = agent.api
    reply = api.setupNetworks({NET: {"nic": "eth1", "bridged": True}}, {}, {})
    assert reply["status"]["code"] == 0, reply
    nl = ns.netlink()
    before_vm = nl.state().comparable()
    vm_id = str(uuid.uuid4())
    reply = api.create({"vmId": vm_id, "vmName": f"hvtest-netvm-{vm_id[:6]}", "memSize": 64,
                        "smp": 1, "devices": [{"type": "interface", "device": "bridge",
                                               "network": NET}]})
    assert reply["status"]["code"] == 0, reply
    try:
        tap = _tap(ns_libvirtd, vm_id)
        state = nl.state()
        link, bridge = state.link(tap), state.link(NET)
        assert link is not None, f"tap {tap!r} not in namespace {ns.name}"
        assert bridge is not None and bridge.kind == "bridge"
        assert link.master == bridge.index
        assert link.up
        assert state.slaves_of(NET) == sorted(["eth1", tap])
        # The agent's report reads the same netlink: the tap is one of the bridge's ports.
        info = api.getVdsCapabilities()["info"]
        assert sorted(info["bridges"][NET]["ports"]) == sorted(["eth1", tap])
    finally:
        with contextlib.suppress(Exception):
            api.destroy(vm_id)
    # The tap goes with the VM: the namespace is as the setup left it.
    assert nl.state().comparable() == before_vm
    reply = api.setupNetworks({NET: {"remove": True}}, {}, {})
    assert reply["status"]["code"] == 0, reply
    assert nl.state().link(NET) is None
    print(f"VM on a namespace's bridge: {time.monotonic() - started:.2f}s")
