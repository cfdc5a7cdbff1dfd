"""`hookvisor vm hibernate|restore|nic-add|nic-remove|disk-add|disk-remove|nic-update`
against an agent served on the test driver (it saves and restores for real, and
refuses device changes: the one-line errors with VDSM's codes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
VM_ID = "0c3f9a52-5b1e-4d8e-8a11-2f6b7c8d9e01"
MAC = "52:54:00:00:0d:01"


def hv(agent: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookvisor", "vm", "--socket", str(agent.socket), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


@pytest.fixture
def agent(dirs: Any, images: Path, serve_process: Any) -> Any:
    dirs.define("UserDefinedVMProperties", "mark=^[a-z]+$")
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    config = dirs.root / "agent.toml"
    config.write_text(f'storage_dirs = ["{images}"]\nunplug_timeout = 1.0\n')
    agent = serve_process(extra=["--config", str(config)])
    out = hv(agent, "create", "--vm-id", VM_ID, "--name", "hvtest-clilive", "--mem", "64",
             "--prop", "mark=blue", "--nic", f"br0,mac={MAC},speed=100")
    assert out.returncode == 0, out.stderr
    return agent


def test_hibernate_and_restore(agent: Any, images: Path) -> None:
    image = images / "vm.save"
    out = hv(agent, "hibernate", VM_ID, str(image))
    assert out.returncode == 0, out.stderr
    assert image.stat().st_size > 0
    [vm] = json.loads(hv(agent, "list", "--json").stdout)
    assert (vm["status"], vm["exitMessage"]) == ("Down", "SaveState")
    assert hv(agent, "destroy", VM_ID).returncode == 0
    out = hv(agent, "restore", str(image), "--vm-id", VM_ID, "--from-snapshot", "--json")
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)
    assert (restored["status"], restored["custom"]) == ("Up", {"mark": "blue"})
    [nic] = [d for d in restored["devices"] if d["type"] == "interface"]
    assert (nic["macAddr"], nic["custom"]) == (MAC, {"speed": "100"})
    out = hv(agent, "hibernate", VM_ID, "/etc/hv.save")
    assert out.returncode == 1
    assert out.stderr.startswith("hookvisor: general (100): hiberVolHandle")
    assert hv(agent, "destroy", VM_ID).returncode == 0


def test_device_verbs_speak_vdsm_codes(agent: Any, images: Path) -> None:
    # The test driver refuses attach/detach/update: each is one line with its code.
    for args, prefix in (
        (("nic-add", VM_ID, "br0,mac=52:54:00:00:0d:02,speed=10"), "hotplugNic (49)"),
        (("nic-add", VM_ID, "br0,speed=fast"), "hotplugNic (49): bad custom properties"),
        (("nic-remove", VM_ID, MAC), "hotunplugNic (50)"),
        (("nic-update", VM_ID, MAC, "--link", "down"), "updateDevice (56)"),
        (("disk-add", VM_ID, str(images / "d.raw")), "hotplugDisk (45)"),
        (("disk-add", VM_ID, "/etc/passwd"), "hotplugDisk (45)"),
        (("disk-remove", VM_ID, "vdq"), "hotunplugDisk (46): VM"),
    ):
        out = hv(agent, *args)
        assert out.returncode == 1, (args, out.stdout)
        assert out.stderr.startswith(f"hookvisor: {prefix}"), (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1
    out = hv(agent, "disk-add", VM_ID, "/etc/passwd")
    assert "drive.path" in out.stderr and "storage_dirs" in out.stderr
    out = hv(agent, "nic-add", VM_ID)
    assert out.returncode == 2 and "NETWORK" in out.stderr
    assert hv(agent, "destroy", VM_ID).returncode == 0


def test_help_lists_the_live_verbs() -> None:
    out = subprocess.run([sys.executable, "-m", "hookvisor", "vm", "--help"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    for verb in ("hibernate", "restore", "nic-add", "nic-remove", "disk-add", "disk-remove",
                 "nic-update"):
        assert verb in out.stdout
