"""What a client may ask of the host in `create`: the files and programs its domain names.

QEMU (and libvirt, which relabels and chowns what a domain names) act as
root on the host, so a domain XML is a list of host files to open, devices
to hand to a guest and programs to run. A client's domain may name files only
inside the operator's `storage_dirs`, may run no program of its own choosing
and may carry no hypervisor pass-through (`<qemu:commandline>` and friends)
unless the operator sets `allow_client_qemu_args`.

Only the client's XML is checked: hooks are the administrator's code and
keep full power (VDSM's qemucmdline hook adds `<qemu:commandline>`).

Every problem names the element (and attribute) at fault, e.g.
`xml: <devices><disk><source file='/etc/shadow'>: outside storage_dirs (...)`.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hookvisor.agent.images import chain_problem
from hookvisor.virt.domain_xml import NS as HOOKVISOR_NS

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# Hypervisor pass-through namespaces of libvirt: each hands the driver raw
# options (command-line arguments, host namespaces to share).
_DRIVER_NS = {
    QEMU_NS: "qemu",
    "http://libvirt.org/schemas/domain/lxc/1.0": "lxc",
    "http://libvirt.org/schemas/domain/bhyve/1.0": "bhyve",
    "http://libvirt.org/schemas/domain/xen/1.0": "xen",
    "http://libvirt.org/schemas/domain/vmware/1.0": "vmware",
}

# Firmware that comes with the host's packages: a client may boot it, read-only.
FIRMWARE_DIRS = (Path("/usr/share/OVMF"), Path("/usr/share/edk2"), Path("/usr/share/AAVMF"),
                 Path("/usr/share/qemu"), Path("/usr/share/seabios"),
                 Path("/usr/share/edk2-ovmf"))
# Entropy sources a guest may read (rng backend model='random').
_RNG_SOURCES = frozenset({"/dev/random", "/dev/urandom", "/dev/hwrng"})

# Attributes whose value is a host path wherever they appear...
# (logFile: passt's log; xauth: an X authority file SDL graphics would read.)
_PATH_ATTRS = ("file", "path", "socket", "evdev", "rendernode", "tap", "vhost", "logFile",
               "xauth")
# ...and those that are one only on a <source> (<target dir> is a guest's mount tag).
_SOURCE_ATTRS = ("dir",)
# Elements whose text is a host path, as (parent tag, tag); None: any parent.
_PATH_TEXTS = {("os", "kernel"), ("os", "initrd"), ("os", "dtb"), ("acpi", "table"),
               ("source", "path"), (None, "database"), ("source", "block"),
               ("source", "char")}
_SHOW_MAX = 120


@dataclass(frozen=True)
class ClientPolicy:
    """The operator's settings and the host's limits a client request is held to."""

    storage_dirs: tuple[Path, ...] = ()
    allow_qemu_args: bool = False
    max_vm_name: int = 255
    # 0: no check (not known).
    max_vcpus: int = 0
    host_memory_mib: int = 0
    # The host's own emulators (libvirt capabilities); empty: no <emulator> allowed.
    emulators: frozenset[str] = field(default_factory=frozenset)

    def storage_roots(self) -> tuple[str, ...]:
        return tuple(os.path.realpath(d) for d in self.storage_dirs)


def _show(value: str) -> str:
    text = value if len(value) <= _SHOW_MAX else value[:_SHOW_MAX] + "..."
    return repr(text)


def inside(path: str, roots: Iterable[str]) -> bool:
    """Whether `path`, symlinks and `..` resolved, is one of `roots` or below one."""
    if not path.startswith("/") or "\0" in path:
        return False
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)


def path_problem(value: object, roots: tuple[str, ...], dirs: tuple[Path, ...], *,
                 file: bool = False) -> str | None:
    """Why `value` may not be named by a client, or None if it may.

    `file`: `value` names a file (a disk image), so a storage directory itself
    is refused too; a directory shared with the guest may be a whole one.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        return f"expected an absolute path, got {_show(str(value))}"
    if "\0" in value:
        return "a path with a NUL byte"
    if not inside(value, roots):
        allowed = ", ".join(str(d) for d in dirs) or "none"
        return f"{_show(value)} is outside storage_dirs ({allowed})"
    if file and os.path.realpath(value) in roots:
        return f"{_show(value)} is a storage_dirs directory itself, not a file in it"
    return None


class _Walk:
    def __init__(self, policy: ClientPolicy) -> None:
        self.policy = policy
        self.roots = policy.storage_roots()
        self.problems: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def path(self, where: str, value: str | None, file: bool = False) -> None:
        problem = path_problem(value, self.roots, self.policy.storage_dirs, file=file)
        if problem:
            self.add(where, problem)


def _tag(elem: ET.Element) -> tuple[str | None, str]:
    """(namespace, local name)."""
    tag = elem.tag
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return None, tag


def _name(chain: list[str]) -> str:
    return "".join(f"<{t}>" for t in chain[-3:])


def _named(chain: list[str], attr: str, value: str) -> str:
    tags = chain[-3:]
    head = "".join(f"<{t}>" for t in tags[:-1])
    return f"{head}<{tags[-1]} {attr}={_show(value)}>"


def check_domain(root: ET.Element, policy: ClientPolicy) -> list[str]:
    """Every reason the client's domain `root` may not be started; [] if none."""
    walk = _Walk(policy)
    for child in root:
        _check(child, ["domain"], walk)
    return walk.problems


def check_device(elem: ET.Element, policy: ClientPolicy) -> list[str]:
    """Every reason a client's hot-plugged device `elem` may not be attached; [] if none."""
    walk = _Walk(policy)
    _check(elem, ["domain", "devices"], walk)
    return walk.problems


def _check(elem: ET.Element, parents: list[str], walk: _Walk) -> None:
    ns, local = _tag(elem)
    chain = [*parents, local]
    if ns is not None:
        if ns == HOOKVISOR_NS:
            return  # ours, rewritten by the agent
        name = _DRIVER_NS.get(ns)
        if name == "qemu" and walk.policy.allow_qemu_args:
            return
        if name == "qemu":
            walk.add(f"<qemu:{local}>", "is not allowed from a client "
                     "(set allow_client_qemu_args)")
        else:
            walk.add(f"<{name or ns}:{local}>", "a hypervisor pass-through element is not "
                     "allowed from a client")
        return
    if local == "metadata" and parents == ["domain"]:
        return  # opaque to libvirt: applications' own data
    if _refused(elem, local, chain, walk):
        return
    for attr in _PATH_ATTRS + (_SOURCE_ATTRS if local == "source" else ()):
        value = elem.get(attr)
        if not value:
            continue  # an empty source (a CD-ROM with no medium) opens nothing
        walk.path(_named(chain, attr, value), value, file=attr == "file")
    _dev_attr(elem, local, chain, walk)
    parent = parents[-1]
    if (parent, local) in _PATH_TEXTS or (None, local) in _PATH_TEXTS:
        walk.path(_name(chain), (elem.text or "").strip())
    for child in elem:
        _check(child, chain, walk)
    if local == "disk" and elem.get("type", "file") in ("file", "block"):
        _disk_images(elem, chain, walk)


def _disk_images(disk: ET.Element, chain: list[str], walk: _Walk) -> None:
    """The files an image's header names (its backing chain), held to the same rule.

    The disk's own image in the format <driver type> gives (raw if none: libvirt
    does not probe a top image), then each <backingStore> the XML gives.
    """
    driver = disk.find("driver")
    fmt: str | None = (driver.get("type") if driver is not None else None) or "raw"
    node: ET.Element | None = disk
    where = _name(chain)
    while node is not None:
        source = node.find("source")
        path = None if source is None else source.get("file") or source.get("dev")
        if path and path_problem(path, walk.roots, walk.policy.storage_dirs) is None:
            problem = chain_problem(path, fmt, lambda p: path_problem(
                p, walk.roots, walk.policy.storage_dirs))
            if problem:
                walk.add(where, problem)
                return
        node = node.find("backingStore")
        if node is not None:
            found = node.find("format")
            fmt = found.get("type") if found is not None else None
            where = _name([*chain, "backingStore"])


def _dev_attr(elem: ET.Element, local: str, chain: list[str], walk: _Walk) -> None:
    """`dev` is a host device node, except a NIC or sound device name (not a path)."""
    value = elem.get("dev")
    if not value or local not in ("source", "input", "output"):
        return
    if ("interface" in chain or "audio" in chain) and not value.startswith("/"):
        return  # eth0 of a direct NIC, hw:0 of ALSA: names, not files
    walk.path(_named(chain, "dev", value), value)


def _refused(elem: ET.Element, local: str, chain: list[str], walk: _Walk) -> bool:
    """Elements checked as a whole; True when nothing below needs looking at."""
    parent = chain[-2]
    where = _name(chain)
    if local == "emulator" and parent == "devices":
        value = (elem.text or "").strip()
        if value and value not in walk.policy.emulators:
            known = ", ".join(sorted(walk.policy.emulators)) or "none"
            walk.add(where, f"{_show(value)} is not one of the host's emulators ({known}); "
                     "leave <emulator> out and libvirt picks the default")
        return True
    if local in ("script", "downscript") and parent == "interface":
        walk.add(where, "runs a program as root: not allowed from a client (a hook may add it)")
        return True
    if local == "binary" and parent == "filesystem" and elem.get("path"):
        walk.add(_named(chain, "path", elem.get("path", "")),
                 "runs a program as root: not allowed from a client (leave it out)")
        return True
    if local == "graphics" and elem.get("type") == "dbus" and elem.get("address"):
        walk.add(where, "a D-Bus address (a host bus QEMU connects to) is not allowed "
                 "from a client")
        return True
    if local == "secret" and parent in ("auth", "encryption"):
        # libvirt's secrets on this host are the operator's (no verb registers
        # one): used by a client, they would answer a CHAP or cephx challenge
        # of a server it names, or open an image encrypted for someone else.
        walk.add(where, "a host secret is the operator's: not allowed from a client "
                 "(a hook may add it)")
        return True
    if local == "bootloader" and parent == "domain":
        walk.add(where, "runs a program on the host: not allowed from a client")
        return True
    if local == "hostdev" or (local == "interface" and elem.get("type") == "hostdev") or (
            local == "disk" and elem.get("type") == "nvme"):
        walk.add(where, "host device pass-through is not allowed from a client "
                 "(a hook may add it)")
        return True
    if local == "disk" and elem.get("type") == "volume":
        walk.add("<disk type='volume'>", "a storage pool volume cannot be checked against "
                 "storage_dirs; name the file (type='file') instead")
        return True
    if local == "seclabel":
        kind = elem.get("type", "dynamic")
        labels = [c for c in elem if _tag(c)[1] in ("label", "baselabel", "imagelabel")]
        if kind in ("none", "static") or labels:
            walk.add(where, "a security label (confinement, the user QEMU runs as) is the "
                     "operator's: not allowed from a client")
        return True
    if local == "backend" and parent == "rng" and elem.get("model", "random") == "random":
        value = (elem.text or "").strip()
        if value and value not in _RNG_SOURCES:
            walk.add(where, f"{_show(value)}: expected one of "
                     f"{', '.join(sorted(_RNG_SOURCES))}")
        return True
    if local in ("loader", "nvram") and parent == "os":
        _firmware(elem, local, chain, walk)
        return True
    return False


def _firmware(elem: ET.Element, local: str, chain: list[str], walk: _Walk) -> None:
    """<loader> may be the host's own firmware, read-only; <nvram> is written: storage only."""
    value = (elem.text or "").strip()
    template = elem.get("template")
    firmware = tuple(os.path.realpath(d) for d in FIRMWARE_DIRS)
    if template is not None and not inside(template, firmware):
        walk.path(_named(chain, "template", template), template)
    if not value:
        return  # libvirt's default (firmware autoselection, nvram under its own dir)
    if local == "loader" and elem.get("readonly") == "yes" and value.startswith("/") \
            and inside(value, firmware):
        return
    walk.path(_name(chain), value)


# --- sizes in the domain --------------------------------------------------------

_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 10**3, "k": 2**10, "kib": 2**10,
    "mb": 10**6, "m": 2**20, "mib": 2**20,
    "gb": 10**9, "g": 2**30, "gib": 2**30,
    "tb": 10**12, "t": 2**40, "tib": 2**40,
    "pb": 10**15, "p": 2**50, "pib": 2**50,
    "eb": 10**18, "e": 2**60, "eib": 2**60,
}
_DIGITS = re.compile(r"^\s*[0-9]{1,30}\s*$")
# When the host's maximum vCPUs is not known.
_MAX_IOTHREADS = 1024


def memory_mib(elem: ET.Element) -> int | None:
    """A libvirt memory element (<memory unit='GiB'>2</memory>) in MiB; None if unreadable."""
    text = elem.text or ""
    unit = elem.get("unit", "KiB").lower()
    if not _DIGITS.match(text) or unit not in _UNITS:
        return None
    return int(text) * _UNITS[unit] // 2**20


def check_sizes(root: ET.Element, policy: ClientPolicy) -> list[str]:
    """<vcpu> and <memory> (and friends) against what the host can give."""
    problems: list[str] = []
    vcpu = root.find("vcpu")
    if vcpu is not None:
        text = vcpu.text or ""
        if not _DIGITS.match(text) or int(text) < 1:
            problems.append(f"<vcpu>: expected a positive number, got {_show(text)}")
        elif policy.max_vcpus and int(text) > policy.max_vcpus:
            problems.append(f"<vcpu>: {int(text)} is more than the host's maximum "
                            f"of {policy.max_vcpus} vCPUs")
    # libvirt allocates an entry per IOThread while parsing (<iothreads>100000000
    # grew an agent on the test driver to 4.7 GB): held to the host's vCPUs, as
    # more IOThreads than CPUs to run them on buys nothing.
    iothreads = root.find("iothreads")
    if iothreads is not None:
        text = iothreads.text or ""
        cap = policy.max_vcpus or _MAX_IOTHREADS
        if not _DIGITS.match(text):
            problems.append(f"<iothreads>: expected a number, got {_show(text)}")
        elif int(text) > cap:
            problems.append(f"<iothreads>: {int(text)} is more than {cap} (the host's "
                            "maximum vCPUs)")
    for tag in ("memory", "currentMemory", "maxMemory"):
        elem = root.find(tag)
        if elem is None:
            continue
        mib = memory_mib(elem)
        if mib is None:
            problems.append(f"<{tag}>: expected a size like <{tag} unit='MiB'>512</{tag}>, "
                            f"got {_show(elem.text or '')} {elem.get('unit', 'KiB')!r}")
        elif policy.host_memory_mib and mib > policy.host_memory_mib:
            problems.append(f"<{tag}>: {mib} MiB is more than the host's "
                            f"{policy.host_memory_mib} MiB")
    return problems
