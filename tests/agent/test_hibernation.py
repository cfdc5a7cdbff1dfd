"""hibernate and dehibernate (create with restoreState) on libvirt's test driver,
served in-process: the driver really writes and reads its save images.

The tiny guest on qemu:///system: tests/agent/test_live_qemu.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest
from support import code, domain_exists, live_xml

from hookvisor import config
from hookvisor.virt import domain_xml as dx

MAC = "52:54:00:00:0b:01"


def recorder(dirs: Any, event: str, rc: int = 0) -> None:
    """Records `event tag=<VM prop> speed=<dev prop> fs=<FROM_SNAPSHOT>` and its payload."""
    dirs.hook(event, "50_rec",
              f'echo "{event} tag=$tag speed=${{speed-}} fs=${{FROM_SNAPSHOT-unset}}" '
              f'>> {dirs.root}/events.log\ncp "$_hook_domxml" {dirs.root}/{event}.xml\n'
              f'[ {rc} = 0 ] || echo "no hibernation today" >&2\nexit {rc}\n')


def events(dirs: Any) -> list[str]:
    path = dirs.root / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def digest(path: Path) -> tuple[str, float]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime


@pytest.fixture
def agent(dirs: Any, images: Path, inproc_agent: Any,
          monkeypatch: pytest.MonkeyPatch) -> Any:
    """An in-process agent whose storage_dirs is `images` (its settings come from
    config.load_settings, called when it starts)."""
    real: Callable[..., config.Settings] = config.load_settings

    def with_images(*args: Any, **kwargs: Any) -> config.Settings:
        return dataclasses.replace(real(*args, **kwargs), storage_dirs=(images,))

    monkeypatch.setattr(config, "load_settings", with_images)
    dirs.define("UserDefinedVMProperties", "tag=^[a-z]+$")
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    return inproc_agent()


def started(agent: Any, tag: str = "blue") -> dict[str, Any]:
    p = {"vmId": str(uuid.uuid4()), "vmName": f"hvtest-hib-{tag}", "memSize": 64,
         "custom": {"tag": tag},
         "devices": [{"type": "interface", "device": "bridge", "network": "br0",
                      "macAddr": MAC, "custom": {"speed": "1000"}}]}
    reply = agent.api.create(p)
    assert code(reply) == 0, reply
    return p


def test_hibernate_then_restore_with_properties(agent: Any, dirs: Any, images: Path) -> None:
    for event in ("before_vm_hibernate", "after_vm_hibernate", "before_vm_dehibernate",
                  "after_vm_dehibernate"):
        recorder(dirs, event)
    p = started(agent)
    image = images / "vm.save"
    assert code(agent.api.hibernate(p["vmId"], str(image))) == 0
    assert not domain_exists(p["vmId"])
    [vm] = agent.api.list(True)["vmList"]
    assert (vm["status"], vm["exitMessage"]) == ("Down", "SaveState")
    # The properties travel inside the image.
    conn = libvirt.open("test:///default")
    try:
        saved = conn.saveImageGetXMLDesc(str(image), 0)
    finally:
        conn.close()
    meta = dx.get_metadata(saved)
    assert meta is not None and meta.vm_props == {"tag": "blue"}
    assert meta.device_props == {f"interface:{MAC}": {"speed": "1000"}}
    assert code(agent.api.destroy(p["vmId"])) == 0  # collects the Down record

    reply = agent.api.create({"vmId": p["vmId"], "restoreState": str(image),
                              "restoreFromSnapshot": True})
    assert code(reply) == 0, reply
    assert reply["vmList"]["status"] == "Up"
    assert reply["vmList"]["custom"] == {"tag": "blue"}
    assert reply["vmList"]["vmName"] == p["vmName"]
    live = live_xml(p["vmId"])
    meta = dx.get_metadata(live)
    assert meta is not None and meta.device_props == {f"interface:{MAC}": {"speed": "1000"}}
    assert events(dirs) == [
        "before_vm_hibernate tag=blue speed= fs=unset",
        "after_vm_hibernate tag=blue speed= fs=unset",
        "before_vm_dehibernate tag=blue speed= fs=True",
        "after_vm_dehibernate tag=blue speed= fs=True",
    ]
    # Domain XML (not a device's) for all four; the saved one before the restore.
    for event in ("before_vm_hibernate", "before_vm_dehibernate", "after_vm_dehibernate"):
        assert dx.identity((dirs.root / f"{event}.xml").read_text())[0] == p["vmId"]
    assert (dirs.root / "before_vm_dehibernate.xml").read_text().strip() == saved.strip()
    [vm] = agent.api.list(True)["vmList"]
    assert vm["custom"] == {"tag": "blue"} and vm["status"] == "Up"
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_vetoed_hibernate_leaves_the_vm_running(agent: Any, dirs: Any, images: Path) -> None:
    recorder(dirs, "before_vm_hibernate", rc=2)
    recorder(dirs, "after_vm_hibernate")
    p = started(agent)
    reply = agent.api.hibernate(p["vmId"], str(images / "vetoed.save"))
    assert code(reply) == 78 and "no hibernation today" in reply["status"]["message"]
    assert list(images.iterdir()) == []
    assert domain_exists(p["vmId"])
    assert agent.api.list()["vmList"][0]["status"] == "Up"
    assert events(dirs) == ["before_vm_hibernate tag=blue speed= fs=unset"]
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_hibernate_outside_the_storage_dirs_is_refused(agent: Any, dirs: Any, images: Path,
                                                       tmp_path: Path) -> None:
    recorder(dirs, "before_vm_hibernate")
    p = started(agent)
    outside = tmp_path / "elsewhere.save"
    for handle in (str(outside), str(images / ".." / "sneaky.save"), "relative.save", 42):
        reply = agent.api.hibernate(p["vmId"], handle)
        assert code(reply) == 100, reply
        assert "hiberVolHandle" in reply["status"]["message"]
    # A symlink inside that points out is judged by where it points.
    (images / "link").symlink_to(tmp_path)
    reply = agent.api.hibernate(p["vmId"], str(images / "link" / "out.save"))
    assert code(reply) == 100 and "storage_dirs" in reply["status"]["message"]
    assert not outside.exists() and not (tmp_path / "out.save").exists()
    assert events(dirs) == []  # refused before any hook
    assert agent.api.list()["vmList"][0]["status"] == "Up"
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_failed_save_leaves_the_vm_running_and_no_image(agent: Any, dirs: Any,
                                                        images: Path) -> None:
    recorder(dirs, "after_vm_hibernate")
    p = started(agent)
    target = images / "missing-dir" / "vm.save"  # libvirt cannot create it
    reply = agent.api.hibernate(p["vmId"], str(target))
    assert code(reply) == 100 and "could not save" in reply["status"]["message"]
    assert not target.exists()
    assert domain_exists(p["vmId"])
    assert agent.api.list()["vmList"][0]["status"] == "Up"
    assert events(dirs) == []
    # An image already there is never overwritten.
    other = images / "other.save"
    other.write_bytes(b"another VM's memory")
    reply = agent.api.hibernate(p["vmId"], str(other))
    assert code(reply) == 100 and "already exists" in reply["status"]["message"]
    assert other.read_bytes() == b"another VM's memory"
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_vetoed_or_failed_restore_leaves_the_image(agent: Any, dirs: Any, images: Path) -> None:
    p = started(agent, "green")
    image = images / "vm.save"
    assert code(agent.api.hibernate(p["vmId"], str(image))) == 0
    assert code(agent.api.destroy(p["vmId"])) == 0
    before = digest(image)

    recorder(dirs, "before_vm_dehibernate", rc=2)
    recorder(dirs, "after_vm_dehibernate")
    reply = agent.api.create({"restoreState": str(image)})
    assert code(reply) == 78 and "no hibernation today" in reply["status"]["message"]
    assert events(dirs) == ["before_vm_dehibernate tag=green speed= fs=False"]
    assert agent.api.list()["vmList"] == []
    assert not domain_exists(p["vmId"])
    assert digest(image) == before

    # A real libvirt failure: another domain holds the VM's name.
    recorder(dirs, "before_vm_dehibernate")
    (dirs.root / "events.log").unlink()
    conn = libvirt.open("test:///default")
    squatter = conn.createXML(
        f"<domain type='test'><name>{p['vmName']}</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>", 0)
    try:
        reply = agent.api.create({"restoreState": str(image)})
    finally:
        squatter.destroy()
        conn.close()
    assert code(reply) == 9 and "could not restore" in reply["status"]["message"], reply
    assert events(dirs) == ["before_vm_dehibernate tag=green speed= fs=False"]
    assert agent.api.list()["vmList"] == []
    assert digest(image) == before

    for bad, why in ((str(images / "nothing.save"), "no image"),
                     ("/etc/passwd", "storage_dirs")):
        reply = agent.api.create({"restoreState": bad})
        assert code(reply) == 9 and why in reply["status"]["message"], reply
    # A vmId that is not the image's VM.
    reply = agent.api.create({"vmId": str(uuid.uuid4()), "restoreState": str(image)})
    assert code(reply) == 9 and "differs" in reply["status"]["message"]

    reply = agent.api.create({"restoreState": str(image)})  # still good
    assert code(reply) == 0, reply
    assert reply["vmList"]["custom"] == {"tag": "green"}
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_hibernate_needs_a_running_vm(agent: Any, images: Path) -> None:
    p = started(agent)
    assert code(agent.api.hibernate(p["vmId"], str(images / "a.save"))) == 0
    reply = agent.api.hibernate(p["vmId"], str(images / "b.save"))
    assert code(reply) == 100 and "Down" in reply["status"]["message"]
    assert code(agent.api.hibernate(str(uuid.uuid4()), str(images / "c.save"))) == 1
    assert code(agent.api.destroy(p["vmId"])) == 0
