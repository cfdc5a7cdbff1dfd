"""The tiny bootable guest of SPEC §5, for tests on qemu:///system.

`scripts/guest.sh build` makes a Debian cloud kernel and a busybox initramfs
(cached in var/guest, or $HOOKVISOR_GUEST_DIR); this module writes the domain
XML that boots it and acknowledges PCI hot-unplug, waits for its serial
console's markers, and collects libvirt's DEVICE_REMOVED events.

A second libvirt host on this machine (scripts/libvirtd2.sh, SPEC §5) is the
migration target: `start_second_host` starts it (idempotent) and gives its URI;
with a network namespace it is a libvirt host whose guests' taps live there.

Fixtures (registered by `pytest_plugins` in tests/conftest.py); each skips when
what it needs is missing, and FAILS instead under CI=true:
  tiny_guest      the built kernel/initrd (session)
  libvirt_host2   the second host's URI, qemu+tcp://127.0.0.1:PORT/system; after
                  the test, this session's domains (SESSION_PREFIX) left on it are
                  destroyed and the test fails
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import subprocess
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt
import pytest
from support import SESSION_PREFIX, assert_no_leftovers, unavailable

# The agent's own check (choose_domain_type), re-exported for the tests that need KVM.
from hookvisor.virt.host import kvm_usable as kvm_usable

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = Path(os.environ.get("HOOKVISOR_GUEST_DIR") or REPO / "var" / "guest")
READY = "HVGUEST-READY"
EXIT = "HVGUEST-EXIT"
# The tag of the host's root filesystem exported to a virtiofs guest.
HOSTROOT = "hostroot"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
# First PCI slot on bus 0 for our root ports (slot 1 is where libvirt puts video).
_FIRST_PORT_SLOT = 2


def guest_command(command: str) -> str:
    """The kernel-cmdline switch that makes a virtiofs guest run `command`.

    The command runs as root under `chroot /host /bin/sh -c`, i.e. in the
    host's own filesystem with the guest's kernel (its /proc, /sys, /dev,
    a private tmpfs on /run; /tmp is the host's, a place to leave results).
    Its output goes to the serial log. The guest prints "HVGUEST-EXIT <rc>"
    and powers off afterwards.
    Base64 because the kernel command line splits on spaces (2 KiB at most).
    """
    return "hv_cmd=" + base64.b64encode(command.encode()).decode()


def guest_xml(name: str, uuid: str, kernel: str | Path, initrd: str | Path,
              serial_log: str | Path, *, root_ports: int = 4, memory_mib: int | None = None,
              virtiofs: bool = False, extra_devices: str = "", command: str | None = None,
              cmdline: str = "", vcpus: int = 1) -> str:
    """A transient domain that boots the tiny guest under TCG (type qemu, no <cpu>).

    `root_ports` free pcie-root-ports, each on its own slot, one per device to
    hot-plug (devices in `extra_devices` take ports too: libvirt adds more when
    it runs out at start, never when hot-plugging). `virtiofs` exports the host's
    / as `hostroot`, mounted at /host in the guest, with the shared memory it
    needs (512 MiB by default then, else 256); `command` (needs `virtiofs`) is a
    shell command the guest runs there, see `guest_command`.
    """
    if command is not None and not virtiofs:
        raise ValueError("a guest command runs in the host's filesystem: needs virtiofs=True")
    memory = memory_mib if memory_mib is not None else (512 if virtiofs else 256)
    args = ["console=ttyS0", "quiet"]
    if virtiofs:
        args.append(f"hv_virtiofs={HOSTROOT}")
    if command is not None:
        args.append(guest_command(command))
    if cmdline:
        args.append(cmdline)
    ports = "".join(
        f"<controller type='pci' index='{i + 1}' model='pcie-root-port'>"
        f"<address type='pci' domain='0' bus='0' slot='{_FIRST_PORT_SLOT + i}'"
        " function='0'/></controller>\n"
        for i in range(root_ports)
    )
    memory_backing = ""
    filesystem = ""
    if virtiofs:
        # memfd + shared: virtiofsd maps the guest's memory. The chroot sandbox:
        # the default namespace one fails here (pivot_root EBUSY), SPEC §5.
        memory_backing = ("<memoryBacking><source type='memfd'/><access mode='shared'/>"
                          "</memoryBacking>")
        filesystem = (
            "<filesystem type='mount' accessmode='passthrough'>"
            "<driver type='virtiofs'/>"
            f"<binary path='{VIRTIOFSD}'><sandbox mode='chroot'/></binary>"
            f"<source dir='/'/><target dir='{HOSTROOT}'/></filesystem>\n"
        )
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid)}</uuid>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  {memory_backing}
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(" ".join(args))}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    {ports}<controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'><source path={quoteattr(str(serial_log))}/><target port='0'/></serial>
    {filesystem}{extra_devices}
  </devices>
</domain>
"""


def diskless_xml(name: str, uuid: str, *, memory_mib: int = 64,
                 domain_type: str = "kvm") -> str:
    """A guest with no disk and no kernel: firmware only, fast to start and migrate.

    It runs under this machine's PVM-based KVM (a kernel would not boot there,
    SPEC §5) but never acknowledges a PCI unplug: for start/migrate/save only.
    """
    return f"""<domain type='{escape(domain_type)}'>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid)}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><controller type='usb' model='none'/><memballoon model='none'/></devices>
</domain>
"""


def read_log(serial_log: str | Path) -> str:
    try:
        return Path(serial_log).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_marker(serial_log: str | Path, timeout: float = 60.0, marker: str = READY,
                step: float = 0.05, dom: Any = None) -> float:
    """Seconds until `marker` shows in the serial log; AssertionError with the log if never.

    With `dom`, a domain that stops first fails at once instead of at the timeout
    (on a shared libvirtd, someone else's leak guard may destroy an `hvtest-` domain).
    """
    start = time.monotonic()
    while True:
        if marker in read_log(serial_log):
            return time.monotonic() - start
        # Read again after seeing it stopped: it may print the marker, then power off.
        if dom is not None and not is_active(dom) and marker not in read_log(serial_log):
            tail = read_log(serial_log)[-2000:]
            raise AssertionError(f"domain stopped before {marker!r}:\n{tail}")
        if time.monotonic() - start > timeout:
            tail = read_log(serial_log)[-2000:]
            raise AssertionError(f"{marker!r} not on the serial console after {timeout}s:\n{tail}")
        time.sleep(step)


def is_active(dom: Any) -> bool:
    """Whether the domain runs; False once a transient one is gone."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


def exit_code(serial_log: str | Path) -> int | None:
    """The guest command's exit status, once the guest has printed it."""
    for line in read_log(serial_log).splitlines():
        if line.startswith(EXIT + " "):
            return int(line.split()[1])
    return None


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def open_with_events(uri: str) -> Any:
    """A connection that receives domain events: libvirt's event loop runs first.

    The loop is hookvisor's own (one per process: two threads running the
    default loop would race), started before the connection opens.
    """
    from hookvisor.virt.host import _ensure_event_loop

    _ensure_event_loop()
    return libvirt.open(uri)


class DeviceRemovedEvents:
    """The aliases of devices libvirt reports removed from one domain.

    A detach call returns when QEMU has asked the guest; the device is gone
    only when this event arrives (SPEC §5).
    """

    def __init__(self, conn: Any, dom: Any) -> None:
        self._conn = conn
        self._queue: queue.Queue[str] = queue.Queue()
        self._id = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._removed, None)

    def _removed(self, _conn: Any, _dom: Any, alias: str, _opaque: Any) -> None:
        self._queue.put(alias)

    def wait(self, alias: str, timeout: float = 10.0) -> float:
        """Seconds until `alias` is reported removed; AssertionError if it never is."""
        start = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise AssertionError(f"no DEVICE_REMOVED for {alias} after {timeout}s")
            try:
                if self._queue.get(timeout=left) == alias:
                    return time.monotonic() - start
            except queue.Empty:
                continue

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.domainEventDeregisterAny(self._id)


@contextlib.contextmanager
def running_domain(conn: Any, xml: str) -> Iterator[Any]:
    """A transient domain created from `xml`, destroyed on the way out."""
    dom = conn.createXML(xml, 0)
    try:
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()


def boot(conn: Any, xml: str, vm_id: str, serial: Path, attempts: int = 3) -> None:
    """Boot to the ready marker. Other test sessions on this libvirtd destroy every
    `hvtest-` domain they find after their tests (their leak guard): boot again then."""
    for attempt in range(attempts):
        serial.unlink(missing_ok=True)
        try:
            conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            if "signal 15" not in str(e) or attempt == attempts - 1:
                raise
            continue
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if "HVGUEST-READY" in (serial.read_text(errors="replace")
                                   if serial.exists() else ""):
                return
            try:
                alive = conn.lookupByUUIDString(vm_id).isActive()
            except libvirt.libvirtError:
                alive = False
            if not alive:
                break
            time.sleep(0.05)
        else:
            wait_marker(serial, 0)  # fails with the console's tail
    raise AssertionError(f"the tiny guest was destroyed while booting, {attempts} times")


@contextlib.contextmanager
def booted(uri: str, xml: str, vm_id: str, serial: Path) -> Iterator[Any]:
    """A connection to `uri` with the guest `xml` booted (`boot`); destroyed and closed on
    the way out. An unreachable libvirtd skips (fails under CI=true)."""
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        unavailable(f"{uri} not reachable: {e}")
    try:
        boot(conn, xml, vm_id, serial)
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByUUIDString(vm_id).destroy()
        conn.close()


@dataclass(frozen=True)
class TinyGuest:
    """The built guest: what `guest_xml` boots."""

    kernel: Path
    initrd: Path

    def xml(self, name: str, serial_log: str | Path, uuid: str | None = None,
            **kwargs: Any) -> str:
        return guest_xml(name, uuid or new_uuid(), self.kernel, self.initrd, serial_log,
                         **kwargs)


def build_guest(directory: Path = GUEST_DIR) -> TinyGuest:
    """Build (or find cached) the guest; RuntimeError saying why if that fails."""
    kernel, initrd = directory / "vmlinuz", directory / "initrd.gz"
    if os.geteuid() == 0:
        # Cheap when cached (the script compares its recipe and returns).
        proc = subprocess.run(["bash", str(REPO / "scripts" / "guest.sh"), "build",
                               str(directory)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/guest.sh build failed:\n{proc.stderr[-2000:]}")
    if not (kernel.is_file() and initrd.is_file()):
        raise RuntimeError(f"no tiny guest in {directory}: run scripts/guest.sh build as root")
    return TinyGuest(kernel, initrd)


def _libvirtd2(command: str, directory: Path | None, netns: str | None) -> str:
    """scripts/libvirtd2.sh COMMAND; its last stdout word (the URI on start)."""
    env = dict(os.environ)
    if directory is not None:
        env["HOOKVISOR_LIBVIRTD2_DIR"] = str(directory)
    if netns is not None:
        env["HOOKVISOR_LIBVIRTD2_NETNS"] = netns
    proc = subprocess.run(["bash", str(REPO / "scripts" / "libvirtd2.sh"), command],
                          capture_output=True, text=True, check=False, env=env)
    words = proc.stdout.split()
    if proc.returncode != 0 or (command == "start" and not words):
        raise RuntimeError(f"scripts/libvirtd2.sh {command} failed:\n{proc.stderr[-2000:]}")
    return words[-1] if words else ""


def start_second_host(directory: Path | None = None, netns: str | None = None) -> str:
    """The second libvirt host's URI, started if it is not running; RuntimeError if it cannot.

    With `netns` (a namespace `ip netns` knows) the daemon runs inside it, its
    state in `directory` (keep it short: the Unix socket's path is limited to
    107 bytes), and the URI is qemu+unix:///system?socket=DIRECTORY/sock/libvirt-sock.
    """
    if os.geteuid() != 0:
        raise RuntimeError("the second libvirt host needs root (scripts/libvirtd2.sh start)")
    return _libvirtd2("start", directory, netns)


def stop_second_host(directory: Path | None = None, netns: str | None = None) -> None:
    """Destroy its domains and stop it (what `start_second_host` was given)."""
    _libvirtd2("stop", directory, netns)


def host_uuid(conn: Any) -> str:
    """The host UUID a libvirt connection reports (its capabilities' <host><uuid>)."""
    root = ElementTree.fromstring(conn.getCapabilities())
    return root.findtext("host/uuid") or ""


@pytest.fixture(scope="session")
def tiny_guest() -> TinyGuest:
    """The tiny guest's kernel and initrd; skip if unavailable (fail under CI=true)."""
    try:
        return build_guest()
    except RuntimeError as e:
        unavailable(str(e))


def second_host_running(directory: Path | None = None) -> bool:
    try:
        _libvirtd2("status", directory, None)
    except RuntimeError:
        return False
    return True


@pytest.fixture(scope="session")
def _libvirt_host2_uri() -> Iterator[str]:
    """Started for the session if it is not running, and then stopped at its end: a
    test run leaves no daemon behind (one an operator started is left alone)."""
    ours = not second_host_running()
    try:
        uri = start_second_host()
    except RuntimeError as e:
        unavailable(str(e))
    yield uri
    if ours:
        stop_second_host()


@pytest.fixture
def libvirt_host2(_libvirt_host2_uri: str) -> Iterator[str]:
    """The second libvirt host's URI; fails the test that leaves a domain of this session
    (SESSION_PREFIX) there."""
    yield _libvirt_host2_uri
    assert_no_leftovers(_libvirt_host2_uri, SESSION_PREFIX)
