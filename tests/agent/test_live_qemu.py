"""Live VM operations on qemu:///system with the tiny booting guest (SPEC §5).

One guest is booted for the whole module (boots are slow under TCG) with the
agent's metadata in it; each test starts its own agent process, which adopts
it, with hooks that record what they received. libvirt's own view afterwards
(live XML, state) proves the operation happened, or after a veto did not.
Failures are real: a disk file that does not exist, a guest that never booted
(it never acknowledges an unplug), a save target outside storage_dirs.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from guest import GUEST_DIR, TinyGuest, boot, booted
from support import SESSION_PREFIX, code, unavailable

from hookvisor.virt import domain_xml as dx

pytestmark = pytest.mark.libvirtd

QEMU_URI = "qemu:///system"
BRIDGE = "hvlivebr0"
MAC1, MAC2, MAC3 = "52:54:00:6b:00:01", "52:54:00:6b:00:02", "52:54:00:6b:00:03"
EVENTS = ("before_nic_hotplug", "after_nic_hotplug", "after_nic_hotplug_fail",
          "before_nic_hotunplug", "after_nic_hotunplug", "after_nic_hotunplug_fail",
          "before_disk_hotplug", "after_disk_hotplug", "after_disk_hotplug_fail",
          "before_disk_hotunplug", "after_disk_hotunplug", "after_disk_hotunplug_fail",
          "before_update_device", "after_update_device", "after_update_device_fail",
          "before_vm_hibernate", "after_vm_hibernate", "before_vm_dehibernate",
          "after_vm_dehibernate")


@dataclass
class Guest:
    vm_id: str
    name: str
    serial: Path
    images: Path  # an allowed storage dir (disks, hibernation images)


@pytest.fixture(scope="module")
def _guest(tiny_guest: TinyGuest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Guest, Any, str]]:
    """The booted tiny guest, as if an earlier agent had created it (its metadata in it)."""
    root = tmp_path_factory.mktemp("live")
    images = root / "images"
    images.mkdir()
    vm_id = str(uuid.uuid4())
    name = f"{SESSION_PREFIX}live-{vm_id[:6]}"
    serial = root / "serial.log"
    xml = dx.set_metadata(tiny_guest.xml(name, serial, uuid=vm_id),
                          dx.Metadata({"tag": "blue"}, {}, {"vmId": vm_id, "vmName": name}))
    with booted(QEMU_URI, xml, vm_id, serial) as conn:
        yield Guest(vm_id, name, serial, images), conn, xml


@pytest.fixture
def guest(_guest: tuple[Guest, Any, str]) -> Guest:
    """The module's guest, booted again if something destroyed it since the last test."""
    booted, conn, xml = _guest
    try:
        alive = conn.lookupByUUIDString(booted.vm_id).isActive()
    except libvirt.libvirtError:
        alive = False
    if not alive:
        boot(conn, xml, booted.vm_id, booted.serial)
    return booted


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    """A host bridge for NICs given as VDSM device dicts (device: bridge)."""
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    made = subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], capture_output=True,
                          text=True, check=False)
    if made.returncode != 0:
        unavailable(f"cannot make bridge {BRIDGE}: {made.stderr}")
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    yield BRIDGE
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


@pytest.fixture
def live_dirs(dirs: Any, guest: Guest) -> Any:
    dirs.define("UserDefinedVMProperties", "tag=^[a-z]+$")
    dirs.define("CustomDeviceProperties",
                "{type=interface;prop={speed=^[0-9]+$;tag=^[a-z]+$}};"
                "{type=disk;prop={serial=^[A-Z0-9]+$}}")
    for event in EVENTS:
        # What the hook saw: props (VM's tag wins over a device's), the payload's root
        # element, FROM_SNAPSHOT; and the payload itself.
        dirs.hook(event, "50_rec", f"""
            root=$(sed -n '1s/^[[:space:]]*<\\([a-z]*\\).*/\\1/p' "$_hook_domxml")
            echo "{event} tag=$tag speed=${{speed-}} serial=${{serial-}} root=$root \
fs=${{FROM_SNAPSHOT-unset}}" >> {dirs.root}/events.log
            cp "$_hook_domxml" {dirs.root}/{event}.xml
            """)
    return dirs


def start_agent(serve_process: Any, dirs: Any, guest: Guest, unplug_timeout: float = 10.0,
                ) -> Any:
    config = dirs.root / "agent.toml"
    allowed = [str(guest.images), str(guest.serial.parent), str(GUEST_DIR), str(dirs.root)]
    config.write_text(f"storage_dirs = {allowed!r}\nunplug_timeout = {unplug_timeout}\n"
                      .replace("'", '"'))
    agent = serve_process(QEMU_URI, ["--config", str(config)])
    assert guest.vm_id in {v["vmId"] for v in agent.api.list()["vmList"]}, agent.log()
    return agent


def events(dirs: Any) -> list[str]:
    path = dirs.root / "events.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def hook(dirs: Any, event: str, name: str, body: str) -> None:
    dirs.hook(event, name, body)


def live(vm_id: str) -> ET.Element:
    conn = libvirt.open(QEMU_URI)
    try:
        return ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc(0))
    finally:
        conn.close()


def macs(vm_id: str) -> set[str]:
    return {m.get("address", "") for m in live(vm_id).iterfind("devices/interface/mac")}


def disks(vm_id: str) -> dict[str, str]:
    """domblklist: target dev -> source file."""
    out = {}
    for disk in live(vm_id).iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None:
            out[target.get("dev", "")] = source.get("file", "") if source is not None else ""
    return out


def device_meta(vm_id: str) -> dict[str, dict[str, str]]:
    meta = dx.get_metadata(ET.tostring(live(vm_id), encoding="unicode"))
    assert meta is not None
    return meta.device_props


def listed(agent: Any, vm_id: str) -> list[dict[str, Any]]:
    [vm] = agent.api.list(True, [vm_id])["vmList"]
    return list(vm["devices"])


# --- NICs -----------------------------------------------------------------------------


def test_nic_hotplug_and_unplug(live_dirs: Any, guest: Guest, bridge: str,
                                serve_process: Any) -> None:
    dirs = live_dirs
    # before_nic_hotplug may modify: the link comes up down.
    hook(dirs, "before_nic_hotplug", "60_link",
         'sed -i "s|state=\\"up\\"|state=\\"down\\"|" "$_hook_domxml"\n'
         '[ "$speed" = 666 ] && { echo "speed 666 refused" >&2; exit 2; }\nexit 0\n')
    agent = start_agent(serve_process, dirs, guest)
    nic = {"type": "interface", "device": "bridge", "network": bridge, "macAddr": MAC1,
           "nicModel": "virtio", "custom": {"speed": "1000", "tag": "devtag"}}
    reply = agent.api.hotplugNic({"vmId": guest.vm_id, "nic": nic})
    assert code(reply) == 0, reply
    assert MAC1 in macs(guest.vm_id)
    elem = next(i for i in live(guest.vm_id).iterfind("devices/interface")
                if i.find("mac").get("address") == MAC1)  # type: ignore[union-attr]
    assert elem.find("link").get("state") == "down"  # type: ignore[union-attr]
    assert device_meta(guest.vm_id) == {f"interface:{MAC1}": {"speed": "1000", "tag": "devtag"}}
    # The VM's tag wins over the device's (VDSM); the payload is the device, not the domain.
    assert events(dirs) == [
        "before_nic_hotplug tag=blue speed=1000 serial= root=interface fs=unset",
        "after_nic_hotplug tag=blue speed=1000 serial= root=interface fs=unset"]
    after = (dirs.root / "after_nic_hotplug.xml").read_text()
    assert "<alias " in after and MAC1 in after  # the live device, as libvirt named it
    [dev] = [d for d in reply["vmList"]["devices"] if d.get("macAddr") == MAC1]
    assert dev["alias"] and dev["custom"] == {"speed": "1000", "tag": "devtag"}
    assert dev["linkActive"] is False
    assert [d["macAddr"] for d in listed(agent, guest.vm_id) if d["type"] == "interface"] \
        == [MAC1]
    [stats] = agent.api.getVmStats(guest.vm_id)["statsList"]
    [dev] = [d for d in stats["devices"] if d.get("macAddr") == MAC1]
    assert dev["alias"] and dev["custom"] == {"speed": "1000", "tag": "devtag"}

    # The xml shape, no bridge needed.
    reply = agent.api.hotplugNic({"vmId": guest.vm_id, "xml": (
        f"<domain><devices><interface type='ethernet'><mac address='{MAC2}'/>"
        "<model type='virtio'/></interface></devices></domain>")})
    assert code(reply) == 0, reply
    assert {MAC1, MAC2} <= macs(guest.vm_id)
    events(dirs)
    # A restarted agent lists the devices as they are, with their properties.
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    agent = serve_process(QEMU_URI, ["--config", str(dirs.root / "agent.toml")])
    nics = {d["macAddr"]: d for d in listed(agent, guest.vm_id) if d["type"] == "interface"}
    assert set(nics) == {MAC1, MAC2}
    assert nics[MAC1]["custom"] == {"speed": "1000", "tag": "devtag"}
    assert nics[MAC2]["custom"] == {} and nics[MAC2]["alias"].startswith("ua-")

    # Vetoed: not attached, and nothing after.
    veto = {**nic, "macAddr": MAC3, "custom": {"speed": "666"}}
    reply = agent.api.hotplugNic({"vmId": guest.vm_id, "nic": veto})
    assert code(reply) == 78 and "speed 666 refused" in reply["status"]["message"]
    assert MAC3 not in macs(guest.vm_id)
    assert events(dirs) == ["before_nic_hotplug tag=blue speed=666 serial= root=interface "
                            "fs=unset"]
    # Bad device property: refused before any hook.
    reply = agent.api.hotplugNic({"vmId": guest.vm_id, "nic": {**veto, "custom": {"speed": "x"}}})
    assert code(reply) == 49 and "speed" in reply["status"]["message"]
    assert events(dirs) == [] and MAC3 not in macs(guest.vm_id)
    # A real libvirt failure: a bridge that does not exist.
    reply = agent.api.hotplugNic({"vmId": guest.vm_id,
                                  "nic": {**nic, "macAddr": MAC3, "network": "hvnosuchbr"}})
    assert code(reply) == 49 and "could not attach" in reply["status"]["message"], reply
    assert events(dirs)[-1].startswith("after_nic_hotplug_fail tag=blue speed=1000")
    assert MAC3 not in macs(guest.vm_id)

    # Unplug by MAC and by alias: done when the guest released it.
    alias2 = next(d["alias"] for d in listed(agent, guest.vm_id) if d.get("macAddr") == MAC2)
    for ident in ({"macAddr": MAC1}, {"alias": alias2}):
        reply = agent.api.hotunplugNic({"vmId": guest.vm_id, "nic": ident})
        assert code(reply) == 0, reply
    assert not {MAC1, MAC2} & macs(guest.vm_id)
    assert device_meta(guest.vm_id) == {}
    assert [d for d in listed(agent, guest.vm_id) if d["type"] == "interface"] == []
    log = events(dirs)
    assert log[:2] == [
        "before_nic_hotunplug tag=blue speed=1000 serial= root=interface fs=unset",
        "after_nic_hotunplug tag=blue speed=1000 serial= root=interface fs=unset"]
    assert [line.split()[0] for line in log[2:]] == ["before_nic_hotunplug",
                                                     "after_nic_hotunplug"]
    reply = agent.api.hotunplugNic({"vmId": guest.vm_id, "nic": {"macAddr": MAC1}})
    assert code(reply) == 50 and "no such interface" in reply["status"]["message"]
    assert agent.stop() == 0


# --- disks ----------------------------------------------------------------------------


def test_disk_hotplug_and_unplug(live_dirs: Any, guest: Guest, serve_process: Any,
                                 tmp_path: Path) -> None:
    dirs = live_dirs
    hook(dirs, "before_disk_hotunplug", "60_veto",
         '[ "$serial" = KEEP ] && { echo "disk is pinned" >&2; exit 2; }\nexit 0\n')
    agent = start_agent(serve_process, dirs, guest)
    image = guest.images / "data.raw"
    image.write_bytes(b"\0" * (1 << 20))
    drive = {"path": str(image), "format": "raw", "iface": "virtio",
             "custom": {"serial": "SN7"}}
    reply = agent.api.hotplugDisk({"vmId": guest.vm_id, "drive": drive})
    assert code(reply) == 0, reply
    assert disks(guest.vm_id) == {"vda": str(image)}
    assert device_meta(guest.vm_id) == {"disk:vda": {"serial": "SN7"}}
    assert events(dirs) == [
        "before_disk_hotplug tag=blue speed= serial=SN7 root=disk fs=unset",
        "after_disk_hotplug tag=blue speed= serial=SN7 root=disk fs=unset"]
    [dev] = [d for d in reply["vmList"]["devices"] if d["type"] == "disk"]
    assert (dev["path"], dev["name"], dev["custom"]) == (str(image), "vda", {"serial": "SN7"})
    assert dev["alias"]

    # A file that does not exist: libvirt fails, after_disk_hotplug_fail runs.
    missing = guest.images / "missing.raw"
    reply = agent.api.hotplugDisk({"vmId": guest.vm_id,
                                   "drive": {**drive, "path": str(missing)}})
    assert code(reply) == 45 and "could not attach" in reply["status"]["message"], reply
    assert [e.split()[0] for e in events(dirs)] == ["before_disk_hotplug",
                                                    "after_disk_hotplug_fail"]
    assert disks(guest.vm_id) == {"vda": str(image)}
    # Outside storage_dirs: refused before any hook.
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"\0" * 4096)
    reply = agent.api.hotplugDisk({"vmId": guest.vm_id, "drive": {**drive, "path": str(outside)}})
    assert code(reply) == 45 and "storage_dirs" in reply["status"]["message"]
    assert events(dirs) == [] and disks(guest.vm_id) == {"vda": str(image)}

    # A vetoed unplug leaves it; then by path it goes.
    keep = guest.images / "keep.raw"
    keep.write_bytes(b"\0" * (1 << 20))
    reply = agent.api.hotplugDisk({"vmId": guest.vm_id, "drive": {
        "path": str(keep), "iface": "virtio", "name": "vdc", "custom": {"serial": "KEEP"}}})
    assert code(reply) == 0, reply
    events(dirs)
    reply = agent.api.hotunplugDisk({"vmId": guest.vm_id, "drive": {"name": "vdc"}})
    assert code(reply) == 78 and "disk is pinned" in reply["status"]["message"]
    assert "vdc" in disks(guest.vm_id)
    for ident in ({"path": str(image)}, {"name": "vdc"}):
        if ident == {"name": "vdc"}:
            (dirs.hooks / "before_disk_hotunplug" / "60_veto").unlink()
        reply = agent.api.hotunplugDisk({"vmId": guest.vm_id, "drive": ident})
        assert code(reply) == 0, reply
    assert disks(guest.vm_id) == {}
    assert device_meta(guest.vm_id) == {}
    log = events(dirs)
    assert "after_disk_hotunplug tag=blue speed= serial=SN7 root=disk fs=unset" in log
    assert "after_disk_hotunplug tag=blue speed= serial=KEEP root=disk fs=unset" in log
    assert agent.stop() == 0


# --- an unplug the guest never acknowledges ---------------------------------------------


def _virsh(*args: str) -> None:
    done = subprocess.run(["virsh", "-c", QEMU_URI, *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr}"


def _plug_frozen_nic(agent: Any, vm_id: str, mac: str) -> None:
    reply = agent.api.hotplugNic({"vmId": vm_id, "xml": (
        f"<interface type='ethernet'><mac address='{mac}'/><model type='virtio'/>"
        "</interface>"), "custom": {"speed": "10"}})
    assert code(reply) == 0, reply


def _unplug_in_background(agent: Any, vm_id: str, mac: str) -> tuple[threading.Thread,
                                                                      dict[str, Any]]:
    result: dict[str, Any] = {}

    def unplug() -> None:
        result["reply"] = agent.api.hotunplugNic({"vmId": vm_id, "nic": {"macAddr": mac}})

    waiting = threading.Thread(target=unplug)
    waiting.start()
    return waiting, result


def test_unplug_from_a_guest_that_never_booted(live_dirs: Any, guest: Guest, serve_process: Any,
                                               tiny_guest: TinyGuest) -> None:
    dirs = live_dirs
    agent = start_agent(serve_process, dirs, guest, unplug_timeout=8.0)
    vm_id = str(uuid.uuid4())
    serial = guest.images / "frozen.log"
    # Started paused: its kernel never runs, so it never releases a device.
    xml = tiny_guest.xml(f"{SESSION_PREFIX}frozen-{vm_id[:6]}", serial, uuid=vm_id)
    reply = agent.api.create({"xml": xml, "launchPaused": True, "custom": {"tag": "frozen"}})
    assert code(reply) == 0, reply
    try:
        _plug_frozen_nic(agent, vm_id, MAC3)
        events(dirs)
        waiting, result = _unplug_in_background(agent, vm_id, MAC3)
        wait_for_file(dirs.root / "before_nic_hotunplug.xml")
        # The wait holds only that VM: the other one is served meanwhile, by verbs...
        assert code(agent.api.getVmStats(guest.vm_id)) == 0
        assert code(agent.api.pause(guest.vm_id)) == 0
        assert code(agent.api.cont(guest.vm_id)) == 0
        # ... and by libvirt's events: those of the waiting VM (a few ms of running, far
        # from booting) do not hold the event workers the other VM's events need.
        _virsh("resume", vm_id)
        _virsh("suspend", vm_id)
        _virsh("suspend", guest.vm_id)
        seen = wait_for_status(agent, guest.vm_id, "Paused")
        assert waiting.is_alive(), "the unplug ended before the check: no proof"
        del seen
        _virsh("resume", guest.vm_id)
        wait_for_status(agent, guest.vm_id, "Up")
        waiting.join(60)
        reply = result["reply"]
        assert code(reply) == 50, reply
        assert "did not release" in reply["status"]["message"]
        assert "8s" in reply["status"]["message"]
        assert events(dirs) == [
            "before_nic_hotunplug tag=frozen speed=10 serial= root=interface fs=unset",
            "after_nic_hotunplug_fail tag=frozen speed=10 serial= root=interface fs=unset"]
        # Still there, and listed as libvirt has it, with its properties.
        assert MAC3 in macs(vm_id)
        [dev] = [d for d in listed(agent, vm_id) if d["type"] == "interface"]
        assert dev["macAddr"] == MAC3 and dev["custom"] == {"speed": "10"}
        assert device_meta(vm_id) == {f"interface:{MAC3}": {"speed": "10"}}
        assert agent.api.list(False, [vm_id])["vmList"][0]["status"] == "Paused"
        assert agent.stop() == 0

        # A destroy does not wait out a long unplug_timeout: it interrupts the wait.
        agent = start_agent(serve_process, dirs, guest, unplug_timeout=300.0)
        _plug_frozen_nic(agent, vm_id, MAC1)
        events(dirs)
        (dirs.root / "before_nic_hotunplug.xml").unlink()
        waiting, result = _unplug_in_background(agent, vm_id, MAC1)
        wait_for_file(dirs.root / "before_nic_hotunplug.xml")
        time.sleep(0.5)  # into libvirt's detach call, or past it into the agent's wait
        assert code(agent.api.destroy(vm_id)) == 0
        waiting.join(60)
        reply = result["reply"]
        assert code(reply) == 50 and "interrupted by a destroy" in reply["status"]["message"]
        assert [e.split()[0] for e in events(dirs)] == ["before_nic_hotunplug",
                                                        "after_nic_hotunplug_fail"]
    finally:
        if agent.proc.poll() is None and vm_id in {v["vmId"] for v in
                                                   agent.api.list()["vmList"]}:
            assert code(agent.api.destroy(vm_id)) == 0
    assert agent.api.list(False, [vm_id])["vmList"] == []
    assert agent.stop() == 0


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def wait_for_status(agent: Any, vm_id: str, status: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        now = agent.api.list(False, [vm_id])["vmList"][0]["status"]
        if now == status:
            return str(now)
        assert time.monotonic() < deadline, f"VM {vm_id} still {now}, not {status}"
        time.sleep(0.02)


# --- vmUpdateDevice ---------------------------------------------------------------------


def test_update_device_link_and_custom(live_dirs: Any, guest: Guest, bridge: str,
                                       serve_process: Any) -> None:
    dirs = live_dirs
    hook(dirs, "before_update_device", "60_veto",
         '[ "$speed" = 1 ] && { echo "too slow" >&2; exit 2; }\nexit 0\n')
    # It may modify: for speed 300 the link stays up whatever the client asked.
    hook(dirs, "before_update_device", "70_mod",
         '[ "$speed" = 300 ] && sed -i "s|state=.down.|state=\\"up\\"|" "$_hook_domxml"\n'
         'exit 0\n')
    agent = start_agent(serve_process, dirs, guest)
    nic = {"type": "interface", "device": "bridge", "network": bridge, "macAddr": MAC1,
           "custom": {"speed": "100"}}
    assert code(agent.api.hotplugNic({"vmId": guest.vm_id, "nic": nic})) == 0
    events(dirs)
    try:
        reply = agent.api.vmUpdateDevice(guest.vm_id, {
            "deviceType": "interface", "macAddr": MAC1, "linkActive": False,
            "custom": {"speed": "200"}})
        assert code(reply) == 0, reply
        elem = next(i for i in live(guest.vm_id).iterfind("devices/interface"))
        assert elem.find("link").get("state") == "down"  # type: ignore[union-attr]
        assert device_meta(guest.vm_id) == {f"interface:{MAC1}": {"speed": "200"}}
        assert events(dirs) == [
            "before_update_device tag=blue speed=200 serial= root=interface fs=unset",
            "after_update_device tag=blue speed=200 serial= root=interface fs=unset"]
        assert "state='down'" in (dirs.root / "before_update_device.xml").read_text() \
            or 'state="down"' in (dirs.root / "before_update_device.xml").read_text()

        reply = agent.api.vmUpdateDevice(guest.vm_id, {"macAddr": MAC1, "linkActive": False,
                                                       "custom": {"speed": "300"}})
        assert code(reply) == 0, reply
        elem = next(i for i in live(guest.vm_id).iterfind("devices/interface"))
        assert elem.find("link").get("state") == "up"  # type: ignore[union-attr]
        reply = agent.api.vmUpdateDevice(guest.vm_id, {"macAddr": MAC1, "linkActive": False,
                                                       "custom": {"speed": "200"}})
        assert code(reply) == 0, reply
        events(dirs)
        reply = agent.api.vmUpdateDevice(guest.vm_id, {"macAddr": MAC1, "custom": {"speed": "1"}})
        assert code(reply) == 78 and "too slow" in reply["status"]["message"]
        assert device_meta(guest.vm_id) == {f"interface:{MAC1}": {"speed": "200"}}
        events(dirs)
        # A real failure: libvirt cannot move the NIC to a bridge that does not exist.
        reply = agent.api.vmUpdateDevice(guest.vm_id, {"macAddr": MAC1,
                                                       "network": "hvnosuchbr"})
        assert code(reply) == 56 and "could not update" in reply["status"]["message"], reply
        assert [e.split()[0] for e in events(dirs)] == ["before_update_device",
                                                        "after_update_device_fail"]
        source = next(i for i in live(guest.vm_id).iterfind("devices/interface/source"))
        assert source.get("bridge") == bridge
        reply = agent.api.vmUpdateDevice(guest.vm_id, {"macAddr": MAC1, "linkActive": "maybe"})
        assert code(reply) == 56 and "linkActive" in reply["status"]["message"]
    finally:
        assert code(agent.api.hotunplugNic({"vmId": guest.vm_id, "nic": {"macAddr": MAC1}})) == 0
    assert agent.stop() == 0


# --- hibernation ------------------------------------------------------------------------


def test_hibernate_kill_the_agent_restore(live_dirs: Any, guest: Guest, serve_process: Any,
                                          tmp_path: Path) -> None:
    dirs = live_dirs
    first = start_agent(serve_process, dirs, guest)
    # A NIC with properties plugged live: the image must carry them too.
    reply = first.api.hotplugNic({"vmId": guest.vm_id, "xml": (
        f"<interface type='ethernet'><mac address='{MAC2}'/><model type='virtio'/>"
        "</interface>"), "custom": {"speed": "42"}})
    assert code(reply) == 0, reply
    reply = first.api.hibernate(guest.vm_id, str(tmp_path / "not-allowed.save"))
    assert code(reply) == 100 and "storage_dirs" in reply["status"]["message"]
    assert not (tmp_path / "not-allowed.save").exists()
    events(dirs)
    image = guest.images / "guest.save"
    statuses: list[str] = []

    def watch() -> None:
        while not statuses or statuses[-1] != "Down":
            with contextlib.suppress(Exception):
                statuses.append(first.api.list(False, [guest.vm_id])["vmList"][0]["status"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert code(first.api.hibernate(guest.vm_id, str(image))) == 0
    watcher.join(30)
    assert "Saving State" in statuses, statuses
    assert image.stat().st_size > 0
    conn = libvirt.open(QEMU_URI)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByUUIDString(guest.vm_id)
        saved = conn.saveImageGetXMLDesc(str(image), 0)
    finally:
        conn.close()
    meta = dx.get_metadata(saved)
    assert meta is not None and meta.vm_props == {"tag": "blue"}
    assert meta.device_props == {f"interface:{MAC2}": {"speed": "42"}}
    [vm] = first.api.list(True, [guest.vm_id])["vmList"]
    assert (vm["status"], vm["exitMessage"]) == ("Down", "SaveState")
    assert events(dirs) == [
        "before_vm_hibernate tag=blue speed= serial= root=domain fs=unset",
        "after_vm_hibernate tag=blue speed= serial= root=domain fs=unset"]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = serve_process(QEMU_URI, ["--config", str(dirs.root / "agent.toml")])
    assert second.api.list(False, [guest.vm_id])["vmList"] == []
    reply = second.api.create({"vmId": guest.vm_id, "restoreState": str(image)})
    assert code(reply) == 0, reply
    assert reply["vmList"]["custom"] == {"tag": "blue"}
    assert reply["vmList"]["status"] == "Up"
    assert events(dirs) == [
        "before_vm_dehibernate tag=blue speed= serial= root=domain fs=False",
        "after_vm_dehibernate tag=blue speed= serial= root=domain fs=False"]
    assert MAC2 in macs(guest.vm_id)
    assert device_meta(guest.vm_id) == {f"interface:{MAC2}": {"speed": "42"}}
    # The guest runs on: it still acknowledges an unplug, with the NIC's properties.
    reply = second.api.hotunplugNic({"vmId": guest.vm_id, "nic": {"macAddr": MAC2}})
    assert code(reply) == 0, reply
    assert events(dirs)[0] == ("before_nic_hotunplug tag=blue speed=42 serial= "
                               "root=interface fs=unset")
    assert second.stop() == 0


def test_destroy_cancels_a_hibernation(live_dirs: Any, guest: Guest, serve_process: Any,
                                       tiny_guest: TinyGuest) -> None:
    """A save writes the guest's memory for a second or more: a destroy meanwhile
    cancels it (libvirt's abortJob) rather than wait, and leaves no image."""
    dirs = live_dirs
    agent = start_agent(serve_process, dirs, guest)
    vm_id = str(uuid.uuid4())
    # Large (never touched, so cheap to host) for a save long enough to cancel.
    xml = tiny_guest.xml(f"{SESSION_PREFIX}cancel-{vm_id[:6]}", guest.images / "cancel.log",
                         uuid=vm_id, memory_mib=8192)
    assert code(agent.api.create({"xml": xml, "launchPaused": True})) == 0
    image = guest.images / "cancelled.save"
    # The save starts once before_vm_hibernate is done: the hook says when.
    dirs.hook("before_vm_hibernate", "90_mark", f"touch {dirs.root}/saving\n")
    result: dict[str, Any] = {}
    saving = threading.Thread(target=lambda: result.update(
        reply=agent.api.hibernate(vm_id, str(image))))
    saving.start()
    wait_for_file(dirs.root / "saving")
    time.sleep(0.1)
    assert code(agent.api.destroy(vm_id)) == 0
    saving.join(60)
    reply = result["reply"]
    assert code(reply) == 100 and "cancelled by a destroy" in reply["status"]["message"], reply
    assert not image.exists()
    assert [e.split()[0] for e in events(dirs)] == ["before_vm_hibernate"]
    assert agent.api.list(False, [vm_id])["vmList"] == []
    conn = libvirt.open(QEMU_URI)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByUUIDString(vm_id)
    finally:
        conn.close()
    assert agent.stop() == 0
