"""A second libvirt host on this machine (scripts/libvirtd2.sh) takes a live migration.

The recipe the migration tests build on (SPEC §5): the tiny guest boots on
qemu:///system, migrates live, peer to peer, to the second host, runs there
(it still acknowledges a PCI hot-unplug) and is gone from the first.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from guest import (
    REPO,
    DeviceRemovedEvents,
    TinyGuest,
    diskless_xml,
    host_uuid,
    kvm_usable,
    new_uuid,
    open_with_events,
    running_domain,
    start_second_host,
    wait_marker,
)
from support import SESSION_PREFIX

pytestmark = pytest.mark.libvirtd

NIC = """<interface type='ethernet'>
  <mac address='52:54:00:4a:22:01'/><model type='virtio'/><alias name='ua-hvnic1'/>
</interface>"""


def migrate(dom: libvirt.virDomain, one: libvirt.virConnect, two: libvirt.virConnect,
            uri: str, what: str) -> libvirt.virDomain:
    """Live-migrate `dom` from `one` to `two` (at `uri`; peer to peer, over 127.0.0.1) and
    print how long it took; gone from `one`, the domain as it arrived on `two`."""
    name = dom.name()
    start = time.monotonic()
    dom.migrateToURI3(uri, {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"},
                      libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)
    print(f"live migration of {what}: {time.monotonic() - start:.2f}s")
    with pytest.raises(libvirt.libvirtError):
        one.lookupByName(name)
    return two.lookupByName(name)


def test_two_independent_hosts(qemu_system: str, libvirt_host2: str) -> None:
    # Starting it again is a no-op: same daemon, same URI.
    assert start_second_host() == libvirt_host2
    one, two = libvirt.open(qemu_system), libvirt.open(libvirt_host2)
    try:
        assert host_uuid(one) and host_uuid(two)
        assert host_uuid(one) != host_uuid(two)
        # Separate state: a domain defined on one is unknown to the other.
        assert {d.name() for d in two.listAllDomains()}.isdisjoint(
            {d.name() for d in one.listAllDomains()})
    finally:
        one.close()
        two.close()


def test_live_migration_to_second_host(qemu_system: str, libvirt_host2: str,
                                       tiny_guest: TinyGuest, tmp_path: Path) -> None:
    name = f"{SESSION_PREFIX}migrate"
    one = open_with_events(qemu_system)
    two = open_with_events(libvirt_host2)
    log = tmp_path / "serial.log"
    try:
        with running_domain(one, tiny_guest.xml(name, log)) as dom:
            wait_marker(log, 120, dom=dom)
            arrived = migrate(dom, one, two, libvirt_host2, "the tiny guest")
            try:
                assert arrived.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                # The guest itself runs there: it answers an unplug request.
                removed = DeviceRemovedEvents(two, arrived)
                try:
                    arrived.attachDeviceFlags(NIC, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    arrived.detachDeviceFlags(NIC, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    removed.wait("ua-hvnic1", timeout=30)
                finally:
                    removed.close()
            finally:
                arrived.destroy()
    finally:
        one.close()
        two.close()


@pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm not usable")
def test_live_migration_of_a_diskless_kvm_guest(qemu_system: str, libvirt_host2: str) -> None:
    name = f"{SESSION_PREFIX}migrate-kvm"
    one, two = libvirt.open(qemu_system), libvirt.open(libvirt_host2)
    try:
        with running_domain(one, diskless_xml(name, new_uuid())) as dom:
            arrived = migrate(dom, one, two, libvirt_host2, "a diskless kvm guest")
            try:
                assert arrived.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                assert arrived.UUIDString() == dom.UUIDString()
            finally:
                arrived.destroy()
    finally:
        one.close()
        two.close()


def test_restart_keeps_uri_and_uuid(libvirt_host2: str) -> None:
    script = ["bash", str(REPO / "scripts" / "libvirtd2.sh")]
    conn = libvirt.open(libvirt_host2)
    before = host_uuid(conn)
    conn.close()
    subprocess.run([*script, "stop"], check=True, capture_output=True)
    status = subprocess.run([*script, "status"], capture_output=True, text=True, check=False)
    assert status.returncode == 1 and status.stdout.strip() == "stopped"
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(libvirt_host2)
    assert start_second_host() == libvirt_host2
    conn = libvirt.open(libvirt_host2)
    try:
        assert host_uuid(conn) == before
    finally:
        conn.close()
