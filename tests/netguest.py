"""Run a shell script under the tiny guest's full kernel (VLAN, bonding, dummy links).

The guest (scripts/netguest.sh) mounts the host's root over virtiofs, puts its own
proc/sys/dev/tmp/run over it, runs the script chrooted there and powers off. The
script's output reaches the serial log; its exit status is the `HV-RC=` line.
The domain is transient and named `hvtest-netguest-...` (the leak guard knows it).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/tmp/hookvisor-netguest")


@dataclass
class GuestRun:
    rc: int | None  # None: the guest never reported one (timeout, crash)
    log: str


def build() -> Path:
    out = subprocess.run(["bash", str(REPO / "scripts" / "netguest.sh"), str(CACHE)],
                         check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def domain_xml(name: str, images: Path, serial: Path, script: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{images / 'vmlinuz'}</kernel>
    <initrd>{images / 'initrd.img'}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 hv.cmd={script}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      <binary path='/usr/lib/qemu/virtiofsd'><sandbox mode='chroot'/></binary>
      <source dir='/'/>
      <target dir='hostroot'/>
    </filesystem>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def run(uri: str, script: str, timeout: float = 600.0,
        prefix: str = "hvtest-netguest-") -> GuestRun:
    """Boot the guest, run `script` (sh) inside it, wait for it to power off."""
    import libvirt

    images = build()
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    script_path = work / "cmd.sh"
    script_path.write_text(script)
    serial = work / "serial.log"
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(uri)
    try:
        dom = conn.createXML(domain_xml(name, images, serial, script_path), 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not dom.isActive():
                    break
            except libvirt.libvirtError:
                break  # transient and gone: powered off
            time.sleep(0.5)
        else:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        log = serial.read_text(errors="replace") if serial.exists() else ""
        rc = None
        for line in log.splitlines():
            if line.startswith("HV-RC="):
                rc = int(line.strip().removeprefix("HV-RC="))
        return GuestRun(rc, log)
    finally:
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
