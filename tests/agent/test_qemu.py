"""On qemu:///system with real diskless guests, the agent served as a process.

Few and fast: 64 MiB guests without disks or kernels (they sit in the BIOS).
Skipped when libvirtd is not reachable, failed instead under CI=true.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import pytest
from support import SESSION_PREFIX, code, wait_for

from hookvisor.virt import domain_xml as dx

pytestmark = pytest.mark.libvirtd


def params(name: str, custom: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"vmId": str(uuid.uuid4()), "vmName": f"{SESSION_PREFIX}{name}-{uuid.uuid4().hex[:6]}",
            "memSize": 64, "smp": 1, "custom": custom or {}, **extra}


def cdrom(serial: str | None = None) -> dict[str, Any]:
    dev: dict[str, Any] = {"type": "disk", "device": "cdrom", "iface": "ide"}
    if serial:
        dev["custom"] = {"serial": serial}
    return dev


def live(uri: str, vm_id: str) -> str | None:
    conn = libvirt.open(uri)
    try:
        return str(conn.lookupByUUIDString(vm_id).XMLDesc(0))
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


@pytest.fixture
def qdirs(dirs: Any) -> Any:
    dirs.define("UserDefinedVMProperties", "tag=^[a-z]+$")
    dirs.define("CustomDeviceProperties", "{type=disk;prop={serial=^[A-Z0-9]+$}}")
    dirs.hook("before_vm_start", "50_desc",
              'sed -i "s|</name>|</name><description>tag-$tag</description>|" "$_hook_domxml"\n')
    dirs.hook("before_vm_start", "90_veto",
              '[ "$tag" = veto ] && { echo "vetoed by policy" >&2; exit 2; }\nexit 0\n')
    dirs.hook("before_device_create", "50_serial",
              'sed -i "s|</disk>|<serial>$serial</serial></disk>|" "$_hook_domxml"\n')
    dirs.hook("after_vm_start", "50_log", f'echo "$vmId $tag" >> {dirs.root}/started.log\n')
    dirs.hook("after_vm_destroy", "50_log",
              f'echo "$vmId $tag" >> {dirs.root}/destroyed.log\n'
              f'cp "$_hook_domxml" {dirs.root}/last-$vmId.xml\n')
    return dirs


def test_hooks_veto_bad_props_and_destroy(qemu_system: str, qdirs: Any,
                                          serve_process: Any) -> None:
    dirs = qdirs
    agent = serve_process(qemu_system)
    p = params("hooked", {"tag": "blue"}, devices=[cdrom("HV42")])
    reply = agent.api.create(p)
    assert code(reply) == 0, reply
    xml = live(qemu_system, p["vmId"])
    assert xml is not None
    root = ET.fromstring(xml)
    assert root.get("type") in ("kvm", "qemu")
    assert root.findtext("description") == "tag-blue"
    assert root.find("devices/disk[@device='cdrom']/serial").text == "HV42"  # type: ignore[union-attr]
    meta = dx.get_metadata(xml)
    assert meta is not None and meta.vm_props == {"tag": "blue"}
    assert meta.device_props == {"disk:hda": {"serial": "HV42"}}

    veto = params("veto", {"tag": "veto"})
    reply = agent.api.create(veto)
    assert code(reply) == 78 and "vetoed by policy" in reply["status"]["message"]
    assert live(qemu_system, veto["vmId"]) is None

    bad = params("badprop", {"tag": "Blue"}, devices=[cdrom("lower")])
    reply = agent.api.create(bad)
    assert code(reply) == 9
    assert "tag" in reply["status"]["message"] and "serial" in reply["status"]["message"]
    assert live(qemu_system, bad["vmId"]) is None
    assert [v["vmId"] for v in agent.api.list()["vmList"]] == [p["vmId"]]

    assert code(agent.api.destroy(p["vmId"])) == 0
    assert live(qemu_system, p["vmId"]) is None
    last = (dirs.root / f"last-{p['vmId']}.xml").read_text()
    assert "<description>tag-blue</description>" in last and "<serial>HV42</serial>" in last
    assert (dirs.root / "destroyed.log").read_text().splitlines() == [f"{p['vmId']} blue"]
    assert agent.stop() == 0
    assert dirs.leftover_files() == []


def test_virsh_destroy_behind_the_agents_back(qemu_system: str, qdirs: Any,
                                              serve_process: Any) -> None:
    dirs = qdirs
    agent = serve_process(qemu_system)
    p = params("behind", {"tag": "red"})
    assert code(agent.api.create(p)) == 0
    subprocess.run(["virsh", "-c", qemu_system, "destroy", p["vmId"]], check=True,
                   capture_output=True, timeout=60)
    vm = wait_for(lambda: [v for v in agent.api.list(True)["vmList"]
                           if v["status"] == "Down"], timeout=20.0)[0]
    assert vm["vmId"] == p["vmId"] and vm["custom"] == {"tag": "red"}
    destroyed = dirs.root / "destroyed.log"
    wait_for(destroyed.exists, timeout=20.0)
    time.sleep(1.0)  # a second after_vm_destroy would come now
    assert destroyed.read_text().splitlines() == [f"{p['vmId']} red"]
    assert "<description>tag-red</description>" in (
        dirs.root / f"last-{p['vmId']}.xml").read_text()
    assert code(agent.api.destroy(p["vmId"])) == 0
    assert destroyed.read_text().splitlines() == [f"{p['vmId']} red"]
    assert agent.api.list()["vmList"] == []
    assert agent.stop() == 0


def test_sigkill_and_restart_adopts_running_vms(qemu_system: str, qdirs: Any,
                                                serve_process: Any) -> None:
    dirs = qdirs
    first = serve_process(qemu_system)
    up = params("adopt", {"tag": "green"}, devices=[cdrom("SN1")])
    paused = params("adoptp", {"tag": "grey"}, launchPaused=True)
    assert code(first.api.create(up)) == 0
    assert code(first.api.create(paused)) == 0
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = serve_process(qemu_system)
    vms = {v["vmId"]: v for v in second.api.list(True)["vmList"]}
    assert set(vms) == {up["vmId"], paused["vmId"]}
    assert vms[up["vmId"]]["status"] == "Up"
    assert vms[up["vmId"]]["custom"] == {"tag": "green"}
    assert vms[up["vmId"]]["devices"][0]["custom"] == {"serial": "SN1"}
    assert vms[up["vmId"]]["vmName"] == up["vmName"]
    assert vms[paused["vmId"]]["status"] == "Paused"
    assert "recovery: adopted VM" in second.log()
    # Start hooks ran once, by the first agent.
    assert len((dirs.root / "started.log").read_text().splitlines()) == 2
    # The adopted VMs are fully managed: hooks get their properties.
    assert code(second.api.destroy(up["vmId"])) == 0
    assert code(second.api.destroy(paused["vmId"])) == 0
    assert sorted((dirs.root / "destroyed.log").read_text().splitlines()) == sorted(
        [f"{up['vmId']} green", f"{paused['vmId']} grey"])
    assert "<serial>SN1</serial>" in (dirs.root / f"last-{up['vmId']}.xml").read_text()
    assert second.stop() == 0
    assert dirs.leftover_files() == []
