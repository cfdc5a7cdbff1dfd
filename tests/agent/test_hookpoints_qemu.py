"""VDSM's other hook points on qemu:///system with the tiny booting guest (SPEC §5).

One guest, booted for the module with what live changes need (SPEC §5, verified:
<maxMemory slots>, a NUMA cell, ACPI, <vcpu current='1'>2</vcpu>, a VNC console
started with VDSM's expired placeholder password) and the agent's metadata;
each test starts its own agent process, which adopts it. Hooks record what
they received (payload kind and root element); libvirt's own view afterwards
(live XML, the secure XML, vCPU count, QEMU's open files) proves the operation.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from guest import GUEST_DIR, TinyGuest, boot, booted
from support import HOOK_PYTHON, SESSION_PREFIX, code

from hookvisor.virt import domain_xml as dx

pytestmark = pytest.mark.libvirtd

QEMU_URI = "qemu:///system"
PASSWORD = "Tk9pw4x2"  # VNC: at most 8 characters
EVENTS = ("before_memory_hotplug", "after_memory_hotplug", "before_set_num_of_cpus",
          "after_set_num_of_cpus", "before_vm_set_ticket", "after_vm_set_ticket",
          "after_disk_prepare", "before_disk_hotplug")


def ready_xml(tiny_guest: TinyGuest, name: str, serial: Path, vm_id: str) -> str:
    graphics = dx.to_string(ET.fromstring(
        "<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='*****' "
        "passwdValidTo='1970-01-01T00:00:01'><listen type='address' address='127.0.0.1'/>"
        "</graphics>"))
    xml = tiny_guest.xml(name, serial, uuid=vm_id, extra_devices=graphics)
    xml = xml.replace("<memory unit='MiB'>256</memory>",
                      "<maxMemory slots='4' unit='MiB'>1024</maxMemory>\n"
                      "  <memory unit='MiB'>256</memory>")
    xml = xml.replace("<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>\n  <cpu><numa><cell "
                      "id='0' cpus='0-1' memory='256' unit='MiB'/></numa></cpu>")
    assert "maxMemory" in xml and "current='1'" in xml
    return dx.set_metadata(xml, dx.Metadata({"tag": "blue"}, {},
                                            {"vmId": vm_id, "vmName": name, "smp": 1,
                                             "memSize": 256}))


@pytest.fixture(scope="module")
def _guest(tiny_guest: TinyGuest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Path, Any, str]]:
    root = tmp_path_factory.mktemp("hookpoints")
    vm_id = str(uuid.uuid4())
    serial = root / "serial.log"
    xml = ready_xml(tiny_guest, f"{SESSION_PREFIX}hp-{vm_id[:6]}", serial, vm_id)
    with booted(QEMU_URI, xml, vm_id, serial) as conn:
        yield vm_id, serial, conn, xml


@pytest.fixture
def guest(_guest: tuple[str, Path, Any, str]) -> Iterator[str]:
    """A freshly booted guest per test: each changes it (DIMMs, vCPUs, disks)."""
    vm_id, serial, conn, xml = _guest
    with contextlib.suppress(libvirt.libvirtError):
        conn.lookupByUUIDString(vm_id).destroy()
    boot(conn, xml, vm_id, serial)
    yield vm_id


@pytest.fixture
def agent(dirs: Any, guest: str, serve_process: Any, tmp_path: Path) -> Any:
    dirs.define("UserDefinedVMProperties", "tag=^[a-z]+$")
    for event in EVENTS:
        # What the hook got: its payload's root element (none: an empty file), a
        # ticket param, the VM's property; and the payload itself.
        dirs.hook(event, "50_rec", f"""
            f="${{_hook_domxml:-$_hook_json}}"
            case "$(head -c 1 "$f")" in
              "{{") root=json ;;
              "") root= ;;
              *) root=$(sed -n '1s/^[[:space:]]*<\\([a-z]*\\).*/\\1/p' "$f") ;;
            esac
            echo "{event} root=$root user=${{userName-}} tag=$tag" >> {dirs.root}/events.log
            cp "$f" {dirs.root}/{event}.data
            """)
    images = tmp_path / "images"
    images.mkdir()
    config = dirs.root / "agent.toml"
    allowed = [str(images), str(GUEST_DIR), str(dirs.root)]
    config.write_text(f"storage_dirs = {allowed!r}\n".replace("'", '"'))
    proc = serve_process(QEMU_URI, ["--config", str(config)])
    assert guest in {v["vmId"] for v in proc.api.list()["vmList"]}, proc.log()
    proc.images = images
    return proc


def events(dirs: Any) -> list[str]:
    path = dirs.root / "events.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def dom(vm_id: str) -> Any:
    return libvirt.open(QEMU_URI).lookupByUUIDString(vm_id)


def live(vm_id: str, flags: int = 0) -> ET.Element:
    return ET.fromstring(dom(vm_id).XMLDesc(flags))


# --- memory -----------------------------------------------------------------------------


def test_memory_hotplug_with_a_modifying_hook(agent: Any, dirs: Any, guest: str,
                                               serve_process: Any) -> None:
    # The hook doubles the DIMM: its change is what libvirt attaches.
    dirs.hook("before_memory_hotplug", "60_double",
              "sed -i 's|>131072<|>262144<|' \"$_hook_domxml\"\n")
    reply = agent.api.hotplugMemory({"vmId": guest, "memory": {"size": 128, "node": 0}})
    assert code(reply) == 0, (reply, agent.log()[-3000:])
    dimms = [m for m in live(guest).iterfind("devices/memory") if m.get("model") == "dimm"]
    assert len(dimms) == 1
    size = dimms[0].find("target/size")
    assert size is not None and int(size.text or 0) == 262144  # KiB: the hook's 256 MiB
    assert reply["vmList"]["memSize"] == 256 + 256
    assert events(dirs) == ["before_memory_hotplug root=memory user= tag=blue",
                            "after_memory_hotplug root=memory user= tag=blue"]
    assert ">262144<" in (dirs.root / "after_memory_hotplug.data").read_text()
    # A restarted agent reads the VM's size from libvirt (no metadata write per change).
    agent.stop()
    again = serve_process(QEMU_URI, ["--config", str(dirs.root / "agent.toml")])
    [vm] = again.api.list(True, [guest])["vmList"]
    assert (vm["memSize"], vm["smp"]) == (512, 1)
    agent = again
    # More than <maxMemory> allows: libvirt's refusal, named, as hotplugMem.
    too_big = agent.api.hotplugMemory({"vmId": guest, "memory": {"size": 4096, "node": 0}})
    assert code(too_big) == 70, too_big
    assert "libvirt could not hot-plug 4096 MiB" in too_big["status"]["message"]
    assert len(too_big["status"]["message"]) > len("libvirt could not hot-plug 4096 MiB into "
                                                   f"VM {guest}: ")


# --- vCPUs ------------------------------------------------------------------------------


def test_vcpus_raised_live_and_vetoed(agent: Any, dirs: Any, guest: str) -> None:
    veto = dirs.hook("before_set_num_of_cpus", "60_veto",
                     "echo 'no second cpu today' >&2; exit 2\n")
    vetoed = agent.api.setNumberOfCpus(guest, 2)
    assert code(vetoed) == 78 and "no second cpu today" in vetoed["status"]["message"]
    assert dom(guest).vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 1
    assert events(dirs) == ["before_set_num_of_cpus root= user= tag=blue"]
    veto.unlink()
    reply = agent.api.setNumberOfCpus(guest, 2)
    assert code(reply) == 0, reply
    assert dom(guest).vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    assert reply["vmList"]["smp"] == 2
    [stats] = agent.api.list(True, [guest])["vmList"]
    assert stats["smp"] == 2
    # No payload: both hooks got an empty file.
    assert events(dirs) == ["before_set_num_of_cpus root= user= tag=blue",
                            "after_set_num_of_cpus root= user= tag=blue"]
    assert (dirs.root / "after_set_num_of_cpus.data").read_text() == ""
    over = agent.api.setNumberOfCpus(guest, 3)  # above <vcpu>'s maximum of 2
    assert code(over) == 60 and "libvirt could not set" in over["status"]["message"]


# --- console ticket ---------------------------------------------------------------------


def test_vnc_ticket(agent: Any, dirs: Any, guest: str) -> None:
    dirs.hook("before_vm_set_ticket", "60_fail", "echo 'ticket audit down' >&2; exit 1\n")
    reply = agent.api.setTicket(guest, PASSWORD, 120, "disconnect", {"userName": "alice"})
    assert code(reply) == 0, reply  # a failing before_vm_set_ticket does not veto
    graphics = live(guest, libvirt.VIR_DOMAIN_XML_SECURE).find("devices/graphics")
    assert graphics is not None
    assert graphics.get("passwd") == PASSWORD
    valid_to = graphics.get("passwdValidTo") or ""
    assert valid_to > "2000" and valid_to != "1970-01-01T00:00:01"
    # Both hooks: the domain XML and the params as variables.
    assert events(dirs) == ["before_vm_set_ticket root=domain user=alice tag=blue",
                            "after_vm_set_ticket root=domain user=alice tag=blue"]
    for event in ("before_vm_set_ticket", "after_vm_set_ticket"):
        assert PASSWORD not in (dirs.root / f"{event}.data").read_text()
    runs = agent.api.getHookRuns({"vmId": guest})["hookRuns"]
    assert {r["event"] for r in runs} >= {"before_vm_set_ticket", "after_vm_set_ticket"}
    assert PASSWORD not in json.dumps(runs)
    assert "ticket audit down" in agent.log()  # logged
    assert PASSWORD not in agent.log()
    # No expiry (ttl 0), as VDSM: the attribute goes.
    assert code(agent.api.setTicket(guest, "Xv3kq9Lm", 0, "keep", {})) == 0
    graphics = live(guest, libvirt.VIR_DOMAIN_XML_SECURE).find("devices/graphics")
    assert graphics is not None and graphics.get("passwd") == "Xv3kq9Lm"
    assert graphics.get("passwdValidTo") is None
    assert "Xv3kq9Lm" not in agent.log()


# --- disk preparation -------------------------------------------------------------------


def _open_files(vm_name: str) -> set[str]:
    pid = int(Path(f"/run/libvirt/qemu/{vm_name}.pid").read_text().strip())
    fds = Path(f"/proc/{pid}/fd")
    out = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            out.add(os.readlink(fd))
    return out


def test_disk_prepare_swaps_what_qemu_opens(agent: Any, dirs: Any, guest: str) -> None:
    images: Path = agent.images
    asked, local = images / "shared.img", images / "local.img"
    for path in (asked, local):
        path.write_bytes(b"\0" * 1024 * 1024)
    dirs.hook("after_disk_prepare", "60_localdisk", """
        import json, os
        path = os.environ["_hook_json"]
        drive = json.load(open(path))
        drive["path"] = drive["path"].replace("shared.img", "local.img")
        json.dump(drive, open(path, "w"))
        """, python=True)
    drive = {"type": "disk", "device": "disk", "path": str(asked), "format": "raw",
             "iface": "virtio"}
    reply = agent.api.hotplugDisk({"vmId": guest, "drive": drive})
    assert code(reply) == 0, (reply, agent.log()[-3000:])
    sources = {s.get("file") for s in live(guest).iterfind("devices/disk/source")}
    assert str(local) in sources and str(asked) not in sources
    name = dom(guest).name()
    opened = _open_files(name)
    assert str(local) in opened and str(asked) not in opened
    seen = json.loads((dirs.root / "after_disk_prepare.data").read_text())
    assert seen["path"] == str(asked) and seen["format"] == "raw" and seen["iface"] == "virtio"
    assert events(dirs) == ["after_disk_prepare root=json user= tag=blue",
                            "before_disk_hotplug root=disk user= tag=blue"]

    # A hook pointing outside storage_dirs is refused: nothing is plugged.
    dirs.hook("after_disk_prepare", "70_escape", """
        import json, os
        path = os.environ["_hook_json"]
        drive = json.load(open(path))
        drive["path"] = "/etc/shadow"
        json.dump(drive, open(path, "w"))
        """, python=True)
    other = images / "other.img"
    other.write_bytes(b"\0" * 1024 * 1024)
    before = {s.get("file") for s in live(guest).iterfind("devices/disk/source")}
    refused = agent.api.hotplugDisk({"vmId": guest, "drive": {**drive, "path": str(other)}})
    assert code(refused) == 45, refused
    assert "not under an allowed storage directory" in refused["status"]["message"]
    assert {s.get("file") for s in live(guest).iterfind("devices/disk/source")} == before
    assert "/etc/shadow" not in _open_files(name)


# --- host devices -----------------------------------------------------------------------


def test_hostdev_list_by_caps_real_devices(agent: Any, dirs: Any) -> None:
    conn = libvirt.open(QEMU_URI)
    try:
        real = {d.name() for d in conn.listAllDevices(0)}
        pci = {d.name() for d in conn.listAllDevices(
            libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)}
    finally:
        conn.close()
    reply = agent.api.hostdevListByCaps([])
    assert code(reply) == 0
    assert set(reply["deviceList"]) == real
    if pci:
        listed = agent.api.hostdevListByCaps(["pci"])["deviceList"]
        assert set(listed) == pci
        assert all(d["params"]["capability"] == "pci" for d in listed.values())
    dirs.hook("after_hostdev_list_by_caps", "60_hide", f"""#!{HOOK_PYTHON}
import json, os
path = os.environ["_hook_json"]
devices = json.load(open(path))
devices.pop("computer", None)
json.dump(devices, open(path, "w"))
""".split("\n", 1)[1], python=True)
    hooked = agent.api.hostdevListByCaps([])["deviceList"]
    assert set(hooked) == real - {"computer"}
