"""What a client's `create` may name on the host: the xml policy and storage_dirs (issue 7 §5)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from support import SESSION_PREFIX, domain_exists

from hookvisor.agent.params import parse_create
from hookvisor.agent.policy import QEMU_NS, ClientPolicy
from hookvisor.errors import Code, VdsmError

EMULATOR = "/usr/bin/qemu-system-x86_64"


def domain(devices: str = "", os_extra: str = "", top: str = "", name: str = "hvtest-pol",
           ns: str = "", vm_id: str | None = None) -> str:
    return (f"<domain type='test'{ns}><name>{name}</name><uuid>{vm_id or uuid.uuid4()}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type>{os_extra}</os>{top}"
            f"<devices>{devices}</devices></domain>")


@pytest.fixture
def policy(images: Path) -> ClientPolicy:
    return ClientPolicy(storage_dirs=(images,), emulators=frozenset({EMULATOR}),
                        max_vcpus=16, host_memory_mib=4096)


def refused(xml: str, policy: ClientPolicy) -> str:
    with pytest.raises(VdsmError) as err:
        parse_create({"xml": xml}, policy)
    assert err.value.code == Code.CREATE_ERR
    return err.value.message


# What, in a domain XML, makes QEMU or libvirt (root) open a host file, hand a
# host device to the guest or run a program; each with what the refusal names.
REFUSED = [
    ("<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>",
     "<source file='/etc/shadow'>"),
    ("<disk type='file'><source file='{images}/../../etc/shadow'/></disk>", "etc/shadow'"),
    ("<disk type='file'><source file='{images}/a.img'/><backingStore type='file'>"
     "<source file='/root/secret.img'/></backingStore></disk>", "<backingStore><source file="),
    ("<disk type='block'><source dev='/dev/sda'/></disk>", "<source dev='/dev/sda'>"),
    ("<disk type='dir'><source dir='/root'/></disk>", "<source dir='/root'>"),
    ("<disk type='volume'><source pool='p' volume='v'/></disk>", "<disk type='volume'>"),
    ("<disk type='nvme'><source type='pci'/></disk>", "<disk>"),
    ("<disk type='network'><source protocol='nbd' name='x'><host transport='unix' "
     "socket='/run/other.sock'/></source></disk>", "<host socket='/run/other.sock'>"),
    ("<serial type='file'><source path='/etc/passwd'/></serial>", "<source path='/etc/passwd'>"),
    ("<console type='pty'><log file='/etc/cron.d/x'/></console>", "<log file='/etc/cron.d/x'>"),
    ("<parallel type='dev'><source path='/dev/mem'/></parallel>", "<source path='/dev/mem'>"),
    ("<channel type='unix'><source mode='connect' path='/run/libvirt/libvirt-sock'/>"
     "<target type='virtio'/></channel>", "libvirt-sock"),
    ("<interface type='ethernet'><script path='/tmp/x.sh'/></interface>",
     "<interface><script>: runs a program"),
    ("<interface type='hostdev'><source><address type='pci'/></source></interface>",
     "<interface>: host device"),
    ("<interface type='vhostuser'><source type='unix' path='/tmp/vu.sock' mode='client'/>"
     "</interface>", "<source path='/tmp/vu.sock'>"),
    ("<interface type='bridge'><source bridge='br0'/><backend tap='/dev/sda'/></interface>",
     "<backend tap='/dev/sda'>"),
    ("<hostdev mode='subsystem' type='pci'><source><address domain='0'/></source></hostdev>",
     "<hostdev>: host device"),
    ("<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>",
     "<source dir='/'>"),
    ("<filesystem type='mount'><driver type='virtiofs'/><binary path='/tmp/evil'/>"
     "<source dir='{images}'/><target dir='t'/></filesystem>", "<binary path='/tmp/evil'>"),
    ("<emulator>/bin/sh</emulator>", "<emulator>: '/bin/sh' is not one of the host's"),
    ("<smartcard mode='host-certificates'><certificate>a</certificate>"
     "<database>/etc/pki/nssdb</database></smartcard>", "<smartcard><database>"),
    ("<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>",
     "<rng><backend>: '/dev/sda'"),
    ("<rng model='virtio'><backend model='egd' type='unix'><source mode='connect' "
     "path='/run/x.sock'/></backend></rng>", "<source path='/run/x.sock'>"),
    ("<graphics type='vnc' socket='/run/vnc.sock'/>", "<graphics socket='/run/vnc.sock'>"),
    ("<graphics type='spice'><listen type='socket' socket='/tmp/s.sock'/></graphics>",
     "<listen socket='/tmp/s.sock'>"),
    ("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend>"
     "</tpm>", "<device path='/dev/tpm0'>"),
    ("<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/></input>",
     "<source evdev='/dev/input/event0'>"),
    ("<memory model='nvdimm'><source><path>/dev/pmem0</path></source>"
     "<target><size unit='KiB'>524288</size></target></memory>", "<memory><source><path>"),
    ("<shmem name='s'><server path='/run/other'/></shmem>", "<server path='/run/other'>"),
    ("<audio id='1' type='file' path='/etc/motd'/>", "<audio path='/etc/motd'>"),
    ("<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/>",
     "<graphics xauth='/root/.Xauthority'>"),
    ("<graphics type='dbus' address='unix:path=/run/dbus/system_bus_socket'/>",
     "<graphics>: a D-Bus address"),
    ("<interface type='user'><backend type='passt' logFile='/etc/profile.d/x.sh'/>"
     "</interface>", "logFile='/etc/profile.d/x.sh'"),
    ("<audio id='1' type='oss'><input dev='/dev/sda'/></audio>", "<input dev='/dev/sda'>"),
    ("<video><model type='virtio'><acceleration accel3d='yes' rendernode='/dev/dri/card0'/>"
     "</model></video>", "rendernode='/dev/dri/card0'"),
    # A host secret (libvirt's, the operator's) handed to a server the client names:
    # CHAP or cephx with the host's key, answered to the client's own target.
    ("<disk type='network'><source protocol='iscsi' name='iqn.2026-01.x:t/1'>"
     "<host name='192.0.2.1' port='3260'/><auth username='u'><secret type='iscsi' "
     "usage='host-chap'/></auth></source><target dev='sda'/></disk>",
     "<auth><secret>: a host secret"),
    ("<disk type='file'><source file='{images}/a.img'><encryption format='luks'>"
     "<secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption>"
     "</source><target dev='vda'/></disk>", "<encryption><secret>: a host secret"),
]

REFUSED_OUTSIDE_DEVICES = [
    ({"os_extra": "<kernel>/boot/vmlinuz</kernel>"}, "<os><kernel>"),
    ({"os_extra": "<initrd>/boot/initrd.img</initrd>"}, "<os><initrd>"),
    ({"os_extra": "<dtb>/boot/x.dtb</dtb>"}, "<os><dtb>"),
    ({"os_extra": "<loader readonly='yes'>/etc/shadow</loader>"}, "<os><loader>"),
    ({"os_extra": "<loader readonly='no'>/usr/share/OVMF/OVMF_CODE.fd</loader>"},
     "<os><loader>"),  # the host's firmware, but writable: no
    ({"os_extra": "<nvram>/etc/passwd</nvram>"}, "<os><nvram>"),
    ({"os_extra": "<nvram template='/root/vars.fd'/>"}, "<nvram template='/root/vars.fd'>"),
    ({"os_extra": "<acpi><table type='slic'>/etc/shadow</table></acpi>"}, "<acpi><table>"),
    ({"top": "<sysinfo type='fwcfg'><entry name='opt/x' file='/root/.ssh/id_rsa'/></sysinfo>"},
     "<entry file='/root/.ssh/id_rsa'>"),
    ({"top": "<seclabel type='none'/>"}, "<seclabel>"),
    ({"top": "<seclabel type='static' model='dac'><label>0:0</label></seclabel>"},
     "<seclabel>"),
    ({"top": "<bootloader>/usr/bin/pygrub</bootloader>"}, "<bootloader>"),
]


@pytest.mark.parametrize(("device", "named"), REFUSED)
def test_a_device_naming_the_host_is_refused_by_name(device: str, named: str,
                                                     images: Path,
                                                     policy: ClientPolicy) -> None:
    message = refused(domain(device.format(images=images)), policy)
    assert named.format(images=images) in message, message
    assert message.startswith("bad create params: xml: "), message


@pytest.mark.parametrize(("parts", "named"), REFUSED_OUTSIDE_DEVICES)
def test_os_sysinfo_and_labels_naming_the_host_are_refused(parts: dict[str, str], named: str,
                                                           policy: ClientPolicy) -> None:
    message = refused(domain(**parts), policy)
    assert named in message, message


def test_what_stays_inside_is_allowed(images: Path, policy: ClientPolicy) -> None:
    (images / "sub").mkdir()
    (images / "inner").symlink_to(images / "sub")
    devices = (
        f"<emulator>{EMULATOR}</emulator>"
        f"<disk type='file'><source file='{images}/a.img'/><target dev='vda'/></disk>"
        f"<disk type='file'><source file='{images}/sub/../b.img'/><target dev='vdb'/></disk>"
        f"<disk type='file'><source file='{images}/inner/c.img'/><target dev='vdc'/></disk>"
        "<disk type='file' device='cdrom'><source file=''/><target dev='hdc'/></disk>"
        "<disk type='file' device='cdrom'><target dev='hdd'/></disk>"
        f"<serial type='file'><source path='{images}/console.log'/></serial>"
        "<interface type='direct'><source dev='eth0' mode='vepa'/></interface>"
        "<interface type='bridge'><source bridge='br0'/><target dev='vnet7'/></interface>"
        f"<filesystem type='mount'><source dir='{images}'/><target dir='share'/></filesystem>"
        "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
        "<graphics type='vnc' port='-1'/>"
        "<audio id='1' type='alsa'><input dev='hw:0'/></audio>"
        "<seclabel relabel='no'/>"  # a device may only opt out of relabelling
    )
    os_extra = ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
                f"<nvram>{images}/vars.fd</nvram><kernel>{images}/vmlinuz</kernel>")
    top = ("<sysinfo type='smbios'><system><entry name='manufacturer'>x</entry></system>"
           "</sysinfo><seclabel type='dynamic' model='selinux'/>")
    req = parse_create({"xml": domain(devices, os_extra, top)}, policy)
    assert req.xml is not None


def test_a_symlink_out_of_storage_is_followed_and_refused(images: Path,
                                                         policy: ClientPolicy) -> None:
    (images / "escape").symlink_to("/etc")
    (images / "shadow.img").symlink_to("/etc/shadow")
    for path in (f"{images}/escape/shadow", f"{images}/shadow.img"):
        message = refused(domain(f"<disk type='file'><source file='{path}'/></disk>"), policy)
        assert "outside storage_dirs" in message and path in message, message


def test_a_storage_dir_itself_is_no_file_but_may_be_shared(images: Path,
                                                           policy: ClientPolicy) -> None:
    message = refused(domain(f"<disk type='file'><source file='{images}/.'/></disk>"), policy)
    assert f"<source file='{images}/.'>: " in message, message
    assert "storage_dirs directory itself" in message, message
    with pytest.raises(VdsmError) as err:
        parse_create({"vmId": str(uuid.uuid4()), "vmName": "hvtest-d", "memSize": 64,
                      "devices": [{"type": "disk", "path": str(images)}]}, policy)
    assert "devices[0].path: " in err.value.message, err.value.message
    assert "storage_dirs directory itself" in err.value.message, err.value.message
    shared = (f"<filesystem type='mount'><source dir='{images}'/>"
              "<target dir='share'/></filesystem>")
    assert parse_create({"xml": domain(shared)}, policy).xml is not None


def test_a_relative_or_nul_path_is_refused(policy: ClientPolicy) -> None:
    assert "absolute path" in refused(domain(
        "<disk type='file'><source file='etc/shadow'/></disk>"), policy)
    assert "absolute" in refused(domain(
        "<serial type='file'><source path='../../etc/passwd'/></serial>"), policy)


def test_qemu_namespace_under_any_prefix_unless_allowed(policy: ClientPolicy) -> None:
    for prefix in ("qemu", "q", "x"):
        xml = domain(ns=f" xmlns:{prefix}='{QEMU_NS}'",
                     top=f"<{prefix}:commandline><{prefix}:arg value='-qmp'/>"
                         f"<{prefix}:arg value='unix:/tmp/q,server'/></{prefix}:commandline>")
        message = refused(xml, policy)
        assert ("<qemu:commandline> is not allowed from a client "
                "(set allow_client_qemu_args)") in message.replace(": is", " is"), message
    caps = domain(ns=f" xmlns:qemu='{QEMU_NS}'",
                  top="<qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>")
    assert "<qemu:capabilities>" in refused(caps, policy)
    # Declared on the element itself, not on the root.
    inline = domain(top=f"<commandline xmlns='{QEMU_NS}'><arg value='-S'/></commandline>")
    assert "<qemu:commandline>" in refused(inline, policy)
    lxc = domain(ns=" xmlns:lxc='http://libvirt.org/schemas/domain/lxc/1.0'",
                 top="<lxc:namespace><lxc:sharenet type='netns' value='1'/></lxc:namespace>")
    assert "<lxc:namespace>" in refused(lxc, policy)
    # The operator's choice: allowed then, and only the qemu namespace.
    allowed = ClientPolicy(storage_dirs=policy.storage_dirs, allow_qemu_args=True)
    xml = domain(ns=f" xmlns:qemu='{QEMU_NS}'",
                 top="<qemu:commandline><qemu:arg value='-S'/></qemu:commandline>")
    assert parse_create({"xml": xml}, allowed).xml is not None
    assert "<lxc:namespace>" in refused(lxc, allowed)
    # Inside <metadata>, any namespace is an application's data, not the hypervisor's.
    meta = domain(top=f"<metadata><commandline xmlns='{QEMU_NS}'/></metadata>")
    assert parse_create({"xml": meta}, policy).xml is not None


def test_every_problem_is_named_at_once(policy: ClientPolicy) -> None:
    message = refused(domain("<disk type='file'><source file='/a'/></disk>"
                             "<serial type='file'><source path='/b'/></serial>",
                             os_extra="<kernel>/c</kernel>"), policy)
    for path in ("'/a'", "'/b'", "'/c'"):
        assert path in message, message


def test_params_built_disks_follow_the_same_rule(images: Path, policy: ClientPolicy) -> None:
    base = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-d", "memSize": 64}
    with pytest.raises(VdsmError) as err:
        parse_create({**base, "devices": [
            {"type": "disk", "path": f"{images}/ok.img"},
            {"type": "disk", "path": "/etc/shadow"},
            {"type": "disk", "path": f"{images}/../x"},
            {"type": "disk", "device": "cdrom", "path": "/dev/sr0"}]}, policy)
    message = err.value.message
    assert "devices[1].path: '/etc/shadow' is outside storage_dirs" in message, message
    assert "devices[2].path" in message and "devices[3].path" in message
    assert "devices[0]" not in message
    req = parse_create({**base, "devices": [{"type": "disk", "path": f"{images}/ok.img"},
                                            {"type": "disk", "device": "cdrom"}]}, policy)
    assert req.spec is not None and len(req.spec.devices) == 2
    # The default policy (no storage dir) lets no file through.
    with pytest.raises(VdsmError):
        parse_create({**base, "devices": [{"type": "disk", "path": f"{images}/ok.img"}]})


def test_entities_are_refused_not_expanded(policy: ClientPolicy) -> None:
    laughs = ('<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa">'
              + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'
                        for i in range(9))
              + f"]><domain type='test'><name>&j;</name><uuid>{uuid.uuid4()}</uuid>"
              "</domain>")
    message = refused(laughs, policy)
    assert "DOCTYPE" in message and "xml" in message
    xxe = ('<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
           "<domain><name>&x;</name></domain>")
    assert "DOCTYPE" in refused(xxe, policy)


# --- through the agent ----------------------------------------------------------


def test_agent_refuses_before_libvirt_and_hooks(direct_agent: Any, dirs: Any) -> None:
    dirs.hook("before_vm_start", "50_mark", f"touch {dirs.root}/hook-ran\n")
    agent = direct_agent()
    vm_id = str(uuid.uuid4())
    xml = domain("<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>",
                 vm_id=vm_id)
    reply = agent.call("create", {"xml": xml})
    assert reply["status"]["code"] == Code.CREATE_ERR, reply
    assert "<source file='/etc/shadow'>" in reply["status"]["message"]
    assert not domain_exists(vm_id)
    assert not (dirs.root / "hook-ran").exists()
    assert agent.call("list")["vmList"] == []
    # Inside storage_dirs, the same domain starts.
    ok = domain(f"<disk type='file'><source file='{agent.images}/a.img'/>"
                "<target dev='vda'/></disk>", vm_id=vm_id)
    reply = agent.call("create", {"xml": ok})
    assert reply["status"]["code"] == 0, reply
    assert agent.call("destroy", vm_id)["status"]["code"] == 0


def test_a_hook_keeps_full_power(direct_agent: Any, dirs: Any) -> None:
    # VDSM's qemucmdline hook: the administrator's code may add what a client may not.
    dirs.hook("before_vm_start", "50_qemucmdline",
              f"sed -i \"s|</domain>|<qemu:commandline xmlns:qemu='{QEMU_NS}'>"
              "<qemu:arg value='-S'/></qemu:commandline></domain>|\" \"$_hook_domxml\"\n")
    agent = direct_agent()
    vm_id = str(uuid.uuid4())
    reply = agent.call("create", {"vmId": vm_id, "vmName": "hvtest-qcmd", "memSize": 64})
    assert reply["status"]["code"] == 0, reply
    try:
        runs = agent.call("getHookRuns", {"vmId": vm_id})["hookRuns"]
        assert runs[0]["outcome"] == "ok" and "qemu:commandline" in runs[0]["diff"]
    finally:
        assert agent.call("destroy", vm_id)["status"]["code"] == 0


def _config(path: Path, **values: Any) -> Path:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        elif isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(repr(str(v)) for v in value)}]")
        else:
            lines.append(f"{key} = {str(value)!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_served_agent_holds_a_client_to_storage_dirs(dirs: Any, serve_process: Any) -> None:
    images = dirs.root / "images"
    images.mkdir()
    cfg = _config(dirs.root / "policy.toml", storage_dirs=[images])
    agent = serve_process(extra=["--config", str(cfg)])
    vm_id = str(uuid.uuid4())
    bad = agent.api.create({"vmId": vm_id, "vmName": "hvtest-srv", "memSize": 64,
                            "devices": [{"type": "disk", "path": "/root/x.img"}]})
    assert bad["status"]["code"] == 9
    assert "devices[0].path: '/root/x.img' is outside storage_dirs" in bad["status"]["message"]
    xml = domain(ns=f" xmlns:qemu='{QEMU_NS}'", vm_id=vm_id,
                 top="<qemu:commandline><qemu:arg value='-S'/></qemu:commandline>")
    bad = agent.api.create({"xml": xml})
    assert bad["status"]["code"] == 9
    assert "<qemu:commandline>" in bad["status"]["message"]
    good = agent.api.create({"vmId": vm_id, "vmName": "hvtest-srv", "memSize": 64,
                             "devices": [{"type": "disk", "path": f"{images}/x.img"}]})
    assert good["status"]["code"] == 0, good
    assert agent.api.destroy(vm_id)["status"]["code"] == 0


def test_qemu_refused_xml_never_reaches_libvirt(qemu_system: str, dirs: Any,
                                               serve_process: Any) -> None:
    images = dirs.root / "images"
    images.mkdir()
    cfg = _config(dirs.root / "policy.toml", storage_dirs=[images])
    dirs.hook("before_vm_start", "50_qemucmdline",
              f"sed -i \"s|</domain>|<qemu:commandline xmlns:qemu='{QEMU_NS}'>"
              "<qemu:env name='HVTEST_HOOK' value='1'/></qemu:commandline></domain>|\" "
              "\"$_hook_domxml\"\n")
    agent = serve_process(qemu_system, extra=["--config", str(cfg)])
    vm_id = str(uuid.uuid4())
    out = dirs.root / "leak.log"  # QEMU would create it when it opens the serial log
    xml = (f"<domain type='qemu' xmlns:qemu='{QEMU_NS}'><name>{SESSION_PREFIX}refused</name>"
           f"<uuid>{vm_id}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os><devices>"
           f"<serial type='file'><source path='{out}'/></serial></devices>"
           "<qemu:commandline><qemu:arg value='-S'/></qemu:commandline></domain>")
    reply = agent.api.create({"xml": xml})
    message = reply["status"]["message"]
    assert reply["status"]["code"] == 9, reply
    assert "<qemu:commandline>" in message and f"<source path='{out}'>" in message
    conn = libvirt.open(qemu_system)
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByUUIDString(vm_id)
        assert f"{SESSION_PREFIX}refused" not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
    assert not out.exists()
    # The hook's <qemu:commandline> does reach QEMU (VDSM's qemucmdline hook).
    p = {"vmId": vm_id, "vmName": f"{SESSION_PREFIX}hookqemu-{vm_id[:6]}", "memSize": 64, "smp": 1}
    reply = agent.api.create(p)
    assert reply["status"]["code"] == 0, reply
    try:
        conn = libvirt.open(qemu_system)
        try:
            live = conn.lookupByUUIDString(vm_id).XMLDesc(0)
            pid = int(Path(f"/run/libvirt/qemu/{p['vmName']}.pid").read_text().strip())
        finally:
            conn.close()
        assert "HVTEST_HOOK" in live
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"HVTEST_HOOK=1" in env
    finally:
        assert agent.api.destroy(vm_id)["status"]["code"] == 0
