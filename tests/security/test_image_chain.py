"""A disk image inside storage_dirs may not lead QEMU to a file outside them.

A qcow2 image names its backing file (and, since QEMU 4.0, an external data
file) in its header; libvirt follows that chain and QEMU (root here) opens
every file in it. Checked against qemu:///system: a client's
`<driver type='qcow2'/><source file='<images>/evil.qcow2'/>` whose header says
`backing file: /root-only/secret` had libvirt open the secret as the VM's
backing store, readable by the guest. A guest can write such a header into a
raw disk of its own, so the header is what has to be checked, at create.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from support import SESSION_PREFIX

from hookvisor.agent.params import parse_create
from hookvisor.agent.policy import ClientPolicy
from hookvisor.errors import Code, VdsmError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    path = tmp_path / "images"
    path.mkdir()
    return path


@pytest.fixture
def policy(images: Path) -> ClientPolicy:
    return ClientPolicy(storage_dirs=(images,), max_vcpus=16, host_memory_mib=4096)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("root only\n")
    path.chmod(0o600)
    return path


def xml_disk(path: Path, fmt: str | None, extra: str = "") -> str:
    driver = f"<driver name='qemu' type='{fmt}'/>" if fmt else ""
    return (f"<domain type='test'><name>hvtest-img</name><uuid>{uuid.uuid4()}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
            f"<devices><disk type='file' device='disk'>{driver}<source file='{path}'/>"
            f"{extra}<target dev='vda' bus='virtio'/></disk></devices></domain>")


def refused(params: dict[str, object], policy: ClientPolicy) -> str:
    with pytest.raises(VdsmError) as err:
        parse_create(params, policy)
    assert err.value.code == Code.CREATE_ERR
    return err.value.message


def test_a_backing_file_outside_storage_is_refused(images: Path, secret: Path,
                                                   policy: ClientPolicy) -> None:
    evil = images / "evil.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil), "1M")
    message = refused({"xml": xml_disk(evil, "qcow2")}, policy)
    assert str(secret) in message and "backing file" in message and "evil.qcow2" in message
    # The same through params (format 'cow' is qcow2).
    params = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-img", "memSize": 64,
              "devices": [{"type": "disk", "path": str(evil), "format": "cow"}]}
    assert str(secret) in refused(params, policy)


def test_a_relative_backing_file_climbing_out_is_refused(images: Path, secret: Path,
                                                         policy: ClientPolicy) -> None:
    evil = images / "rel.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", f"../{secret.name}", "-F", "raw", "-u",
             str(evil), "1M")
    assert secret.name in refused({"xml": xml_disk(evil, "qcow2")}, policy)


def test_the_whole_chain_is_followed(images: Path, secret: Path, policy: ClientPolicy) -> None:
    middle = images / "middle.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(middle), "1M")
    top = images / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(middle), "-F", "qcow2", str(top), "1M")
    assert str(secret) in refused({"xml": xml_disk(top, "qcow2")}, policy)
    # Named as the backingStore of a clean image, the same.
    clean = images / "clean.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(clean), "1M")
    store = (f"<backingStore type='file'><format type='qcow2'/><source file='{middle}'/>"
             "</backingStore>")
    assert str(secret) in refused({"xml": xml_disk(clean, "qcow2", store)}, policy)


def test_an_external_data_file_outside_storage_is_refused(images: Path, secret: Path,
                                                          policy: ClientPolicy) -> None:
    evil = images / "data.qcow2"
    outside = secret.parent / "data.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={outside}", str(evil), "1M")
    assert str(outside) in refused({"xml": xml_disk(evil, "qcow2")}, policy)


def test_formats_that_name_other_files_are_refused(images: Path, policy: ClientPolicy) -> None:
    vmdk = images / "disk.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(vmdk), "1M")
    message = refused({"xml": xml_disk(vmdk, "vmdk")}, policy)
    assert "vmdk" in message and "raw or qcow2" in message


def test_clean_images_and_chains_inside_storage_are_allowed(images: Path,
                                                            policy: ClientPolicy) -> None:
    base = images / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    top = images / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top), "1M")
    raw = images / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", str(raw), "1M")
    for path, fmt in ((top, "qcow2"), (base, "qcow2"), (raw, "raw"), (raw, None), (top, "raw")):
        parse_create({"xml": xml_disk(path, fmt)}, policy)
    # A file not there yet (a CD-ROM inserted later, an image a hook makes): nothing to read.
    parse_create({"xml": xml_disk(images / "later.qcow2", "qcow2")}, policy)


def test_served_qemu_agent_refuses_the_chain_and_libvirt_never_opens_it(
        qemu_system: str, dirs: Any, serve_process: Any) -> None:
    images = dirs.root / "images"
    images.mkdir()
    secret = dirs.root / "secret.txt"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    evil = images / "evil.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil), "1M")
    cfg = dirs.root / "policy.toml"
    cfg.write_text(f"storage_dirs = [{str(images)!r}]\n")
    agent = serve_process(qemu_system, extra=["--config", str(cfg)])
    vm_id = str(uuid.uuid4())
    xml = (f"<domain type='qemu'><name>{SESSION_PREFIX}backing</name><uuid>{vm_id}</uuid>"
           "<memory unit='MiB'>32</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type>"
           "</os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
           f"<source file='{evil}'/><target dev='vda' bus='virtio'/></disk></devices></domain>")
    reply = agent.api.create({"xml": xml, "launchPaused": True})
    assert reply["status"]["code"] == Code.CREATE_ERR, reply
    assert f"backing file '{secret}'" in reply["status"]["message"]
    conn = libvirt.open(qemu_system)
    try:
        assert f"{SESSION_PREFIX}backing" not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def test_a_hot_plugged_disk_is_held_to_the_same_check(
        images: Path, secret: Path, inproc_agent: Any) -> None:
    agent = inproc_agent(storage_dirs=[str(images)])
    evil = images / "evil.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil), "1M")
    vm_id = str(uuid.uuid4())
    assert agent.api.create({"vmId": vm_id, "vmName": "hvtest-plug-chain",
                             "memSize": 64})["status"]["code"] == 0
    try:
        for request in ({"drive": {"path": str(evil), "format": "cow"}},
                        {"xml": "<disk type='file'><driver name='qemu' type='qcow2'/>"
                                f"<source file='{evil}'/><target dev='vdz'/></disk>"}):
            reply = agent.api.hotplugDisk({"vmId": vm_id, **request})
            assert reply["status"]["code"] == Code.HOTPLUG_DISK, reply
            assert f"backing file '{secret}' is outside storage_dirs" in \
                reply["status"]["message"], reply
    finally:
        agent.api.destroy(vm_id)
