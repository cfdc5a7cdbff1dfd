"""Hot(un)plug and vmUpdateDevice on libvirt's test driver, served in-process.

The test driver refuses device attach/detach/update: that is a real libvirt
failure, which must run the after_..._fail hooks and answer the verb's code.
Param checks and property checks come before any hook. The real operations
run on the tiny guest: tests/agent/test_live_qemu.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import code, live_xml

from hookvisor import config

MAC0, MAC1 = "52:54:00:00:0c:00", "52:54:00:00:0c:01"


def events(dirs: Any) -> list[str]:
    path = dirs.root / "events.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


@pytest.fixture
def agent(dirs: Any, images: Path, inproc_agent: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    real: Callable[..., config.Settings] = config.load_settings
    monkeypatch.setattr(config, "load_settings", lambda *a, **k: dataclasses.replace(
        real(*a, **k), storage_dirs=(images,)))
    dirs.define("UserDefinedVMProperties", "tag=^[a-z]+$")
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}};"
                "{type=disk;prop={serial=^[A-Z0-9]+$}}")
    for event in ("before_nic_hotplug", "after_nic_hotplug", "after_nic_hotplug_fail",
                  "before_nic_hotunplug", "after_nic_hotunplug_fail",
                  "before_disk_hotplug", "after_disk_hotplug_fail",
                  "before_disk_hotunplug", "after_disk_hotunplug_fail",
                  "before_update_device", "after_update_device_fail"):
        dirs.hook(event, "50_rec", f'echo "{event} tag=$tag speed=${{speed-}} '
                  f'serial=${{serial-}} $(head -c 10 "$_hook_domxml")" >> {dirs.root}/events.log\n')
    return inproc_agent()


@pytest.fixture
def vm(agent: Any) -> Any:
    p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-plug", "memSize": 64,
         "custom": {"tag": "red"},
         "devices": [{"type": "interface", "network": "br0", "macAddr": MAC0,
                      "custom": {"speed": "10"}}]}
    assert code(agent.api.create(p)) == 0
    yield p["vmId"]
    agent.api.destroy(p["vmId"])


def test_a_refused_attach_runs_after_fail(agent: Any, vm: str, dirs: Any) -> None:
    nic = {"type": "interface", "network": "br0", "macAddr": MAC1, "custom": {"speed": "100"}}
    reply = agent.api.hotplugNic({"vmId": vm, "nic": nic})
    assert code(reply) == 49 and "could not attach" in reply["status"]["message"]
    assert events(dirs) == ["before_nic_hotplug tag=red speed=100 serial= <interface",
                            "after_nic_hotplug_fail tag=red speed=100 serial= <interface"]
    assert MAC1 not in live_xml(vm)
    assert [v["vmId"] for v in agent.api.list()["vmList"]] == [vm]


def test_a_refused_detach_and_update_run_after_fail(agent: Any, vm: str, dirs: Any) -> None:
    reply = agent.api.hotunplugNic({"vmId": vm, "nic": {"macAddr": MAC0.upper()}})
    assert code(reply) == 50 and "could not detach" in reply["status"]["message"]
    assert events(dirs) == ["before_nic_hotunplug tag=red speed=10 serial= <interface",
                            "after_nic_hotunplug_fail tag=red speed=10 serial= <interface"]
    assert MAC0 in live_xml(vm)
    reply = agent.api.vmUpdateDevice(vm, {"deviceType": "interface", "macAddr": MAC0,
                                          "linkActive": False})
    assert code(reply) == 56 and "could not update" in reply["status"]["message"]
    assert events(dirs) == ["before_update_device tag=red speed=10 serial= <interface",
                            "after_update_device_fail tag=red speed=10 serial= <interface"]
    [full] = agent.api.list(True)["vmList"]
    assert full["devices"][0]["custom"] == {"speed": "10"}
    [stats] = agent.api.getVmStats(vm)["statsList"]
    [nic] = stats["devices"]
    assert (nic["macAddr"], nic["network"], nic["custom"]) == (MAC0, "br0", {"speed": "10"})


def test_disk_failures(agent: Any, vm: str, dirs: Any, images: Path, tmp_path: Path) -> None:
    ok = images / "d.raw"
    ok.write_bytes(b"\0" * 4096)
    reply = agent.api.hotplugDisk({"vmId": vm, "drive": {"path": str(ok),
                                                          "custom": {"serial": "S1"}}})
    assert code(reply) == 45 and "could not attach" in reply["status"]["message"]
    assert events(dirs) == ["before_disk_hotplug tag=red speed= serial=S1 <disk type",
                            "after_disk_hotplug_fail tag=red speed= serial=S1 <disk type"]
    for drive, why in (({"path": str(tmp_path / "x.raw")}, "storage_dirs"),
                       ({"path": "rel.raw"}, "drive.path"),
                       ({"path": str(ok), "custom": {"serial": "low"}}, "serial"),
                       ({"path": str(ok), "iface": "floppy"}, "drive.iface"),
                       ("not a dict", "drive:")):
        reply = agent.api.hotplugDisk({"vmId": vm, "drive": drive})
        assert code(reply) == 45 and why in reply["status"]["message"], (drive, reply)
    reply = agent.api.hotplugDisk({"vmId": vm, "xml": f"<disk><source file='{tmp_path}/y'/>"
                                   "<target dev='vdz'/></disk>"})
    assert code(reply) == 45 and "storage_dirs" in reply["status"]["message"]
    reply = agent.api.hotplugDisk({"vmId": vm, "xml": "<disk type='block'>"
                                   "<source dev='/dev/sda'/><target dev='vdz'/></disk>"})
    assert code(reply) == 45 and "outside storage_dirs" in reply["status"]["message"]
    reply = agent.api.hotunplugDisk({"vmId": vm, "drive": {"name": "vdq"}})
    assert code(reply) == 46 and "no such disk" in reply["status"]["message"]
    assert events(dirs) == []


def test_a_storage_dir_itself_is_no_disk(agent: Any, vm: str, dirs: Any, images: Path) -> None:
    (images / "sub").mkdir()
    for path in (str(images), f"{images}/", f"{images}/sub/.."):
        reply = agent.api.hotplugDisk({"vmId": vm, "drive": {"path": path}})
        message = reply["status"]["message"]
        assert code(reply) == 45 and "storage_dirs directory itself" in message, reply
        assert "drive.path" in message, message
        reply = agent.api.hotplugDisk({"vmId": vm, "xml": f"<disk><source file='{path}'/>"
                                       "<target dev='vdz'/></disk>"})
        message = reply["status"]["message"]
        assert code(reply) == 45 and "storage_dirs directory itself" in message, reply
        assert "<source file=" in message, message
    assert events(dirs) == []



def test_a_refused_disk_detach_runs_after_fail(agent: Any, dirs: Any, images: Path) -> None:
    disk = images / "boot.raw"
    disk.write_bytes(b"\0" * 4096)
    p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-plugdisk", "memSize": 64,
         "custom": {"tag": "red"},
         "devices": [{"type": "disk", "path": str(disk), "custom": {"serial": "B1"}}]}
    assert code(agent.api.create(p)) == 0
    try:
        reply = agent.api.hotunplugDisk({"vmId": p["vmId"], "drive": {"path": str(disk)}})
        assert code(reply) == 46 and "could not detach" in reply["status"]["message"]
        assert events(dirs) == [
            "before_disk_hotunplug tag=red speed= serial=B1 <disk type",
            "after_disk_hotunplug_fail tag=red speed= serial=B1 <disk type"]
        assert str(disk) in live_xml(p["vmId"])
    finally:
        assert code(agent.api.destroy(p["vmId"])) == 0


def test_bad_params_are_refused_before_any_hook(agent: Any, vm: str, dirs: Any) -> None:
    cases = [
        ("hotplugNic", {"vmId": vm, "nic": {"network": "br0", "custom": {"speed": "fast"}}},
         49, "speed"),
        ("hotplugNic", {"vmId": vm, "nic": {"network": "br0", "macAddr": "nope"}}, 49,
         "nic.macAddr"),
        ("hotplugNic", {"vmId": vm, "nic": {"network": "br0", "macAddr": MAC0}}, 49,
         "already has"),
        ("hotplugNic", {"vmId": vm, "xml": "<domain><devices/></domain>"}, 49, "no <interface>"),
        ("hotplugNic", {"vmId": vm, "xml": "<interface"}, 49, "not well-formed"),
        ("hotplugNic", {"vmId": vm, "xml": "<interface type='ethernet'><script path='/x'/>"
                        "</interface>"}, 49, "<script>"),
        # The client policy holds for a plugged device as for a whole domain.
        ("hotplugNic", {"vmId": vm, "xml": "<interface type='vhostuser'><source type='unix' "
                        "path='/etc/hv-sock' mode='server'/><model type='virtio'/>"
                        "</interface>"}, 49, "/etc/hv-sock"),
        ("hotplugNic", {"vmId": vm, "xml": "<interface type='hostdev'><source><address "
                        "type='pci' domain='0' bus='0' slot='1' function='0'/></source>"
                        "</interface>"}, 49, "host device pass-through"),
        ("hotplugDisk", {"vmId": vm, "xml": "<disk type='file'><source file='/etc/shadow'/>"
                         "<target dev='vdz'/></disk>"}, 45, "/etc/shadow"),
        ("hotplugNic", {"vmId": vm}, 49, "nic:"),
        ("hotplugNic", ["not", "a", "struct"], 49, "params"),
        ("hotunplugNic", {"vmId": vm, "nic": {}}, 50, "macAddr or alias"),
        ("hotunplugNic", {"vmId": vm, "nic": {"macAddr": MAC1}}, 50, "no such interface"),
        ("hotplugNic", {"vmId": str(uuid.uuid4()), "nic": {"network": "br0"}}, 1, "no VM"),
    ]
    for verb, params, want, why in cases:
        reply = getattr(agent.api, verb)(params)
        assert code(reply) == want and why in reply["status"]["message"], (verb, params, reply)
    for params, why in (({"macAddr": MAC0, "deviceType": "disk"}, "deviceType"),
                        ({"macAddr": MAC0, "linkActive": "sideways"}, "linkActive"),
                        ({"macAddr": MAC0, "custom": {"speed": "x"}}, "speed"),
                        ({"alias": "net9"}, "no such interface")):
        reply = agent.api.vmUpdateDevice(vm, params)
        assert code(reply) == 56 and why in reply["status"]["message"], (params, reply)
    assert events(dirs) == []


def test_devices_change_only_on_a_running_vm(agent: Any, vm: str, images: Path) -> None:
    assert code(agent.api.hibernate(vm, str(images / "vm.save"))) == 0
    reply = agent.api.hotplugNic({"vmId": vm, "nic": {"network": "br0"}})
    assert code(reply) == 49 and "is Down" in reply["status"]["message"]
