"""A second libvirt host on this machine (scripts/libvirtd2.sh) takes a live migration.

The recipe the migration tests build on (SPEC §5): the tiny guest boots on
qemu:///system, migrates live, peer to peer, to the second host, runs there
(it still acknowledges a PCI hot-unplug) and is gone from the first.
"""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest
from guest import (
    DeviceRemovedEvents,
    TinyGuest,
    host_uuid,
    open_with_events,
    running_domain,
    wait_marker,
)

pytestmark = pytest.mark.libvirtd

NIC = """<interface type='ethernet'>
  <mac address='52:54:00:4a:22:01'/><model type='virtio'/><alias name='ua-hvnic1'/>
</interface>"""


def test_two_independent_hosts(qemu_system: str, libvirt_host2: str) -> None:
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
    name = "hvtest-migrate"
    one = open_with_events(qemu_system)
    two = open_with_events(libvirt_host2)
    log = tmp_path / "serial.log"
    try:
        with running_domain(one, tiny_guest.xml(name, log)) as dom:
            wait_marker(log, 120)
            start = time.monotonic()
            dom.migrateToURI3(libvirt_host2, {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"},
                              libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)
            elapsed = time.monotonic() - start
            print(f"live migration of the tiny guest: {elapsed:.2f}s")
            with pytest.raises(libvirt.libvirtError):
                one.lookupByName(name)
            arrived = two.lookupByName(name)
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
