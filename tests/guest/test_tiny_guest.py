"""The tiny guest boots on qemu:///system and acknowledges PCI hot-unplug (SPEC §5).

This is the recipe the live-operation tests build on: boot, wait for the
console's ready marker, plug a virtio NIC and a virtio disk, unplug each and
see libvirt's DEVICE_REMOVED event. The virtiofs flavour runs the host's own
Python under the guest's kernel, with the VLAN, bond and dummy links this
machine's kernel lacks.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import libvirt
import pytest
from guest import (
    EXIT,
    REPO,
    DeviceRemovedEvents,
    TinyGuest,
    exit_code,
    is_active,
    open_with_events,
    running_domain,
    wait_marker,
)
from support import SESSION_PREFIX

pytestmark = pytest.mark.libvirtd

NIC = """<interface type='ethernet'>
  <mac address='52:54:00:4a:11:01'/><model type='virtio'/><alias name='ua-hvnic0'/>
</interface>"""
DISK = """<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/><source file='{path}'/>
  <target dev='vdb' bus='virtio'/><alias name='ua-hvdisk0'/>
</disk>"""
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


def test_boot_hotplug_and_unplug(qemu_system: str, tiny_guest: TinyGuest, tmp_path: Path,
                                 record_property: pytest.RecordProperty) -> None:
    conn = open_with_events(qemu_system)
    log = tmp_path / "serial.log"
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    times: dict[str, float] = {}
    try:
        start = time.monotonic()
        with running_domain(conn, tiny_guest.xml(f"{SESSION_PREFIX}tiny", log)) as dom:
            wait_marker(log, 120, dom=dom)
            times["boot"] = time.monotonic() - start
            removed = DeviceRemovedEvents(conn, dom)
            try:
                for kind, xml, alias, needle in (
                    ("nic", NIC, "ua-hvnic0", "52:54:00:4a:11:01"),
                    ("disk", DISK.format(path=disk), "ua-hvdisk0", str(disk)),
                ):
                    t = time.monotonic()
                    dom.attachDeviceFlags(xml, LIVE)
                    times[f"{kind}_attach"] = time.monotonic() - t
                    assert needle in dom.XMLDesc(0)
                    t = time.monotonic()
                    dom.detachDeviceFlags(xml, LIVE)
                    removed.wait(alias, timeout=30)
                    times[f"{kind}_detach"] = time.monotonic() - t
                    assert needle not in dom.XMLDesc(0)
            finally:
                removed.close()
            assert dom.isActive()
    finally:
        conn.close()
    for key, value in times.items():
        record_property(key, round(value, 3))
    print("tiny guest:", ", ".join(f"{k} {v:.3f}s" for k, v in times.items()))


def test_virtiofs_runs_host_python_with_vlan_bond_dummy(
        qemu_system: str, tiny_guest: TinyGuest, tmp_path: Path) -> None:
    conn = open_with_events(qemu_system)
    log = tmp_path / "serial.log"
    out = tmp_path / "links.txt"
    # The host's /tmp is the guest's /tmp (virtiofs): the result comes back as a file.
    script = (
        "from pyroute2 import IPRoute\n"
        "ip = IPRoute()\n"
        "ip.link('add', ifname='hvd0', kind='dummy')\n"
        "d0 = ip.link_lookup(ifname='hvd0')[0]\n"
        "ip.link('add', ifname='hvd0.7', kind='vlan', link=d0, vlan_id=7)\n"
        "ip.link('add', ifname='hvbond0', kind='bond')\n"
        "names = sorted(l.get_attr('IFLA_IFNAME') for l in ip.get_links())\n"
        f"open({str(out)!r}, 'w').write(' '.join(names))\n"
    )
    command = (f"cd {shlex.quote(str(REPO))} && "
               f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}")
    try:
        start = time.monotonic()
        with running_domain(conn, tiny_guest.xml(f"{SESSION_PREFIX}tinyfs", log, virtiofs=True,
                                                 command=command)) as dom:
            ready = wait_marker(log, 120, dom=dom)
            wait_marker(log, 180, marker=EXIT, dom=dom)
            print(f"virtiofs guest: ready {ready:.1f}s, "
                  f"command done {time.monotonic() - start:.1f}s")
            assert exit_code(log) == 0, log.read_text(errors="replace")
            # The guest powers itself off after its command: a transient domain vanishes.
            deadline = time.monotonic() + 60
            while is_active(dom):
                assert time.monotonic() < deadline, "guest did not power off"
                time.sleep(0.1)
    finally:
        conn.close()
    assert out.read_text().split() == ["hvbond0", "hvd0", "hvd0.7", "lo"]

