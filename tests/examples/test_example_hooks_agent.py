"""The example hooks and their definitions (examples/properties.sh) in a running agent.

In-process on test:///default, so the test reads the live domain the agent started.
"""

from __future__ import annotations

import shutil
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from support import live_xml

REPO = Path(__file__).resolve().parent.parent.parent
TEST_URI = "test:///default"
VM_PROPS = ("numa=^(strict|preferred|interleave):[0-9,^-]+$;pincpu=^[0-9,^-]+$;"
            "cantmigrate=^(true|false)$")
DEVICE_PROPS = "{type=interface;prop={extnet=^[a-zA-Z0-9_.-]+$}}"
MAC = "52:54:00:00:00:e1"


def test_properties_script_matches_these_definitions() -> None:
    # What the script defines is checked by running it (tests/examples/test_example_hooks.py).
    text = (REPO / "examples" / "properties.sh").read_text()
    for prop in VM_PROPS.split(";"):
        assert f"'UserDefinedVMProperties={prop}'" in text, prop
    assert f"'CustomDeviceProperties={DEVICE_PROPS}'" in text


@pytest.fixture
def agent(dirs: Any, inproc_agent: Any, test_driver_leak_guard: None) -> Any:
    shutil.rmtree(dirs.hooks)
    shutil.copytree(REPO / "examples" / "hooks", dirs.hooks, symlinks=True)
    dirs.define("UserDefinedVMProperties", VM_PROPS)
    dirs.define("CustomDeviceProperties", DEVICE_PROPS)
    return inproc_agent()


def params(custom: dict[str, str], nic_custom: dict[str, str] | None = None) -> dict[str, Any]:
    nic: dict[str, Any] = {"type": "interface", "device": "bridge", "network": "br0",
                           "macAddr": MAC, "nicModel": "virtio"}
    if nic_custom:
        nic["custom"] = nic_custom
    return {"vmId": str(uuid.uuid4()), "vmName": f"hvtest-ex-{uuid.uuid4().hex[:6]}",
            "memSize": 64, "smp": 2, "custom": custom, "devices": [nic]}


def test_example_hooks_shape_the_started_domain(agent: Any) -> None:
    p = params({"numa": "strict:0", "pincpu": "0-1"}, {"extnet": "default"})
    reply = agent.api.create(p)
    assert reply["status"]["code"] == 0, reply
    try:
        live = ET.fromstring(live_xml(p["vmId"]))
        memory = live.find("numatune/memory")
        assert memory is not None and memory.get("nodeset") == "0"
        assert live.find("vcpu").get("cpuset") == "0-1"  # type: ignore[union-attr]
        nic = live.find("devices/interface")
        assert nic is not None and nic.get("type") == "network"
        assert nic.find("source").get("network") == "default"  # type: ignore[union-attr]
    finally:
        assert agent.api.destroy(p["vmId"])["status"]["code"] == 0


def test_value_the_definition_refuses_never_reaches_a_hook(agent: Any) -> None:
    reply = agent.api.create(params({"numa": "lazy:0", "pincpu": "one"}))
    assert reply["status"]["code"] == 9
    message = reply["status"]["message"]
    assert "'numa'" in message and "'pincpu'" in message
    assert agent.api.getHookRuns({})["hookRuns"] == []


def test_value_the_hook_refuses_vetoes_with_its_message(agent: Any) -> None:
    p = params({"pincpu": "^3"})  # passes ^[0-9,^-]+$; the hook knows better
    reply = agent.api.create(p)
    assert reply["status"]["code"] == 78
    assert "50_pincpu" in reply["status"]["message"]
    assert "excludes CPUs but includes none" in reply["status"]["message"]
    assert agent.api.list()["vmList"] == []
