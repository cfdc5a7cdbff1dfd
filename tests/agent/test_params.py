"""create params: defaults, normalisation, and every problem named at once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hookvisor.agent.params import parse_create
from hookvisor.agent.policy import ClientPolicy
from hookvisor.errors import Code, VdsmError
from hookvisor.virt.spec import DiskSpec, NicSpec

VM_ID = str(uuid.uuid4())


def problems(params: object) -> str:
    with pytest.raises(VdsmError) as err:
        parse_create(params)
    assert err.value.code == Code.CREATE_ERR
    return err.value.message


def test_defaults_and_normalised_params() -> None:
    req = parse_create({"vmId": VM_ID.upper(), "vmName": "a", "memSize": "128",
                        "custom": {"n": 5},
                        "devices": [{"type": "interface", "network": "br0", "nicModel": "pv"},
                                    {"type": "disk", "path": "/images/x.img", "bootOrder": "1"}]},
                       ClientPolicy(storage_dirs=(Path("/images"),)))
    assert req.vm_id == VM_ID and req.launch_paused is False
    assert req.spec is not None and req.spec.mem_mib == 128 and req.spec.smp == 1
    nic, disk = req.spec.devices
    assert isinstance(nic, NicSpec) and nic.model == "virtio" and nic.mac.startswith("52:54:00:")
    assert isinstance(disk, DiskSpec) and disk.iface == "virtio" and disk.boot_order == 1
    assert req.vm_props == {"n": "5"}
    # The generated MAC is part of the params a later list(full=True) shows.
    assert req.params["devices"][0]["macAddr"] == nic.mac


def test_every_problem_is_named() -> None:
    message = problems({"vmId": "x", "vmName": "", "memSize": 0, "smp": True,
                        "launchPaused": "maybe", "custom": {"a": ["b"]},
                        "devices": [{"type": "disk"}, {"type": "interface", "network": "b",
                                                       "macAddr": "zz", "nicModel": "ne2k"},
                                    "nope"]})
    for name in ("vmId", "vmName", "memSize", "smp", "launchPaused", "custom.a",
                 "devices[0].path", "devices[1].macAddr", "devices[1].nicModel",
                 "devices[2]"):
        assert name in message, (name, message)


def test_params_must_be_a_struct() -> None:
    assert "params" in problems(["vmId"])


def test_xml_mode() -> None:
    xml = "<domain type='kvm'><name>n</name><memory>1</memory></domain>"
    req = parse_create({"vmId": VM_ID, "xml": xml})
    assert req.spec is None and req.xml is not None and f"<uuid>{VM_ID}</uuid>" in req.xml
    assert req.name == "n"
    other = str(uuid.uuid4())
    assert "differs" in problems({"vmId": VM_ID, "xml": xml.replace(
        "<name>", f"<uuid>{other}</uuid><name>")})
    assert "vmId" in problems({"xml": xml})
    assert "<name>" in problems({"vmId": VM_ID, "xml": "<domain type='kvm'/>"})

