"""Domain XML: built from a VmSpec, and the agent's own <metadata> inside it.

The metadata carries what the agent must know about a VM after a restart or a
migration: the VM's custom properties, each device's custom properties (keyed
by a device identity libvirt does not change: a NIC's MAC, a disk's target
dev) and the creation params (JSON), so `list(full=True)` survives a restart.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hookvisor.virt.spec import DiskSpec, NicSpec, VmSpec

NS = "https://hookvisor.org/xmlns/vm/1.0"
PREFIX = "hookvisor"
# Registered so serialised XML says hookvisor:/qemu: rather than ns0:/ns1:.
ET.register_namespace(PREFIX, NS)
ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")

_Q = f"{{{NS}}}"
_DISK_PREFIX = {"virtio": "vd", "scsi": "sd", "ide": "hd"}
_DISK_FORMAT = {"raw": "raw", "cow": "qcow2"}


class DomainXmlError(ValueError):
    """XML that cannot be used as a domain or device; the message says why."""


@dataclass
class Metadata:
    vm_props: dict[str, str] = field(default_factory=dict)
    # device key (see device_key) -> that device's custom properties
    device_props: dict[str, dict[str, str]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceRef:
    index: int  # position among <devices>' children
    kind: str  # element tag: disk, interface, ...
    key: str | None
    xml: str


def parse(text: str, what: str = "domain XML") -> ET.Element:
    # Entities are declared only in a DOCTYPE: without one, no entity expansion
    # (billion laughs) and no external entity. libvirt's XML never needs one.
    if "<!DOCTYPE" in text:
        raise DomainXmlError(f"{what}: a DOCTYPE (entity declarations) is not allowed")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise DomainXmlError(f"{what} is not well-formed: {e}") from None
    # What walks or writes a tree (the xml policy, ElementTree's serialiser)
    # recurses per level: 100,000 nested elements were a RecursionError. A
    # domain is a dozen levels deep; libxml2 (libvirt) stops at 256.
    if len(root) and _deeper_than(root, MAX_DEPTH):
        raise DomainXmlError(f"{what}: elements nested deeper than {MAX_DEPTH}")
    return root


MAX_DEPTH = 128


def _deeper_than(root: ET.Element, limit: int) -> bool:
    if sum(1 for _ in root.iter()) <= limit:
        return False  # fewer elements than levels: the common case, one C-level pass
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in elem)
    return False


def to_string(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def parse_domain(text: str) -> ET.Element:
    root = parse(text)
    if root.tag != "domain":
        raise DomainXmlError(f"domain XML: root element is <{root.tag}>, not <domain>")
    return root


# --- building -----------------------------------------------------------------


# A new domain is written as text, not through ElementTree: building, indenting
# and serialising a tree was most of the agent's own cost of a create. The
# output is what ElementTree would write (same escaping, indentation, order);
# a test holds the two together.

# (tag, attributes, text, children)
_Node = tuple[str, dict[str, str], str | None, list["_Node"]]


def _node(tag: str, text: str | None = None, children: list[_Node] | None = None,
          **attrs: str) -> _Node:
    return tag, attrs, text, children or []


# What ElementTree escapes; most values hold none of it, and a search is one call
# where the replaces are three or seven.
_TEXT_SPECIAL = re.compile("[&<>]")
_ATTR_SPECIAL = re.compile('[&<>"\r\n\t]')


def _escape_text(text: str) -> str:
    if _TEXT_SPECIAL.search(text) is None:
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(text: str) -> str:
    if _ATTR_SPECIAL.search(text) is None:
        return text
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\r", "&#13;").replace("\n", "&#10;")
            .replace("\t", "&#09;"))


def _emit(node: _Node, depth: int, out: list[str]) -> None:
    # Runs for every element of every domain a create builds: plain concatenation,
    # no per-attribute generator or format.
    tag, attrs, text, children = node
    pad = "  " * depth
    head = pad + "<" + tag
    for k, v in attrs.items():
        head += " " + k + '="' + _escape_attr(v) + '"'
    if children:
        out.append(head + ">")
        depth += 1
        for child in children:
            _emit(child, depth, out)
        out.append(pad + "</" + tag + ">")
    elif text:
        out.append(head + ">" + _escape_text(text) + "</" + tag + ">")
    else:
        out.append(head + " />")


def _disk_targets(spec: VmSpec) -> list[str | None]:
    """Target dev names in device order: vda, vdb, ..., hda, ... per bus."""
    used: dict[str, int] = {}
    names: list[str | None] = []
    for dev in spec.devices:
        if not isinstance(dev, DiskSpec):
            names.append(None)
            continue
        prefix = _DISK_PREFIX[dev.iface]
        n = used.get(prefix, 0)
        used[prefix] = n + 1
        names.append(prefix + _letters(n))
    return names


def disk_targets(spec: VmSpec) -> list[str | None]:
    """Each device's target dev as build() names it (None for a NIC)."""
    return _disk_targets(spec)


def _letters(n: int) -> str:
    # 0 -> a, 25 -> z, 26 -> aa: libvirt's own disk naming.
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("a") + r) + out
    return out


def _disk(disk: DiskSpec, target: str) -> _Node:
    children = [_node("driver", name="qemu", type=_DISK_FORMAT[disk.format])]
    if disk.path:
        children.append(_node("source", file=disk.path))
    children.append(_node("target", dev=target, bus=disk.iface))
    if disk.readonly or disk.device == "cdrom":
        children.append(_node("readonly"))
    if disk.boot_order is not None:
        children.append(_node("boot", order=str(disk.boot_order)))
    return _node("disk", None, children, type="file", device=disk.device)


# VDSM starts graphics with this placeholder, already expired: no one connects
# until a setTicket, and QEMU takes a password live only if it started with one.
PLACEHOLDER_PASSWD = "*****"
EXPIRED = "1970-01-01T00:00:01"


def graphics_node(kind: str) -> _Node:
    return _node("graphics", None, [_node("listen", type="address", address="127.0.0.1")],
                 type=kind, autoport="yes", listen="127.0.0.1", passwd=PLACEHOLDER_PASSWD,
                 passwdValidTo=EXPIRED)


def _nic(nic: NicSpec) -> _Node:
    return _node("interface", None, [
        _node("mac", address=nic.mac),
        ("source", {nic.device: nic.network}, None, []),
        _node("model", type=nic.model),
        _node("link", state="up" if nic.link_active else "down"),
    ], type=nic.device)


def _props_nodes(props: dict[str, str]) -> list[_Node]:
    return [_node(PREFIX + ":custom", value, name=name) for name, value in sorted(props.items())]


def _metadata_node(meta: Metadata) -> _Node:
    children = _props_nodes(meta.vm_props)
    for key, props in sorted(meta.device_props.items()):
        children.append(_node(PREFIX + ":device", None, _props_nodes(props), key=key))
    children.append(_node(PREFIX + ":params", json.dumps(meta.params, sort_keys=True)))
    return _node("metadata", None, [_node(PREFIX + ":vm", None, children)])


def build(spec: VmSpec, domain_type: str, arch: str = "x86_64",
          meta: Metadata | None = None) -> str:
    """Domain XML for `spec`; devices appear in the order given, nothing else added.

    With `meta`, the agent's metadata too, as set_metadata would write it: one
    step per create instead of a build, a parse and a second serialisation.
    """
    devices = []
    for dev, target in zip(spec.devices, _disk_targets(spec), strict=True):
        if isinstance(dev, DiskSpec):
            assert target is not None
            devices.append(_disk(dev, target))
        else:
            devices.append(_nic(dev))
    children = [_node("name", spec.name), _node("uuid", spec.vm_id)]
    if meta is not None:
        children.append(_metadata_node(meta))
    hotplug_mem = spec.mem_slots > 0 and spec.max_mem_mib > spec.mem_mib
    if hotplug_mem:
        children.append(_node("maxMemory", str(spec.max_mem_mib), slots=str(spec.mem_slots),
                              unit="MiB"))
    max_vcpus = max(spec.max_vcpus, spec.smp)
    children += [
        _node("memory", str(spec.mem_mib), unit="MiB"),
        _node("currentMemory", str(spec.mem_mib), unit="MiB"),
        ("vcpu", {"current": str(spec.smp)} if max_vcpus > spec.smp else {},
         str(max_vcpus), []),
        _node("os", None, [_node("type", "hvm", arch=arch, machine="pc")]),
    ]
    if hotplug_mem:
        # A DIMM goes to a NUMA node, and QEMU announces it through ACPI.
        children += [
            _node("features", None, [_node("acpi")]),
            _node("cpu", None, [_node("numa", None, [
                _node("cell", id="0", cpus=f"0-{max_vcpus - 1}" if max_vcpus > 1 else "0",
                      memory=str(spec.mem_mib), unit="MiB")])]),
        ]
    if spec.graphics != "none":
        devices.append(graphics_node(spec.graphics))
    children += [
        _node("on_poweroff", "destroy"),
        _node("on_reboot", "restart"),
        _node("on_crash", "destroy"),
        _node("devices", None, devices),
    ]
    # ElementTree declares a namespace on the root, before the root's own attributes.
    attrs = {f"xmlns:{PREFIX}": NS} if meta is not None else {}
    out: list[str] = []
    _emit(("domain", {**attrs, "type": domain_type}, None, children), 0, out)
    return "\n".join(out)


# --- identity -----------------------------------------------------------------


def identity(text: str) -> tuple[str | None, str | None]:
    """(uuid, name) of a domain XML; None where absent."""
    root = parse_domain(text)
    return root.findtext("uuid"), root.findtext("name")


def set_uuid(text: str, vm_id: str) -> str:
    root = parse_domain(text)
    elem = root.find("uuid")
    if elem is None:
        elem = ET.Element("uuid")
        # libvirt does not care where, but people read it after <name>.
        root.insert(1 if root.find("name") is not None else 0, elem)
    elem.text = vm_id
    return to_string(root)


# --- devices ------------------------------------------------------------------


def device_key(elem: ET.Element) -> str | None:
    """A device identity that survives libvirt's rewriting of the XML."""
    if elem.tag == "interface":
        mac = elem.find("mac")
        if mac is not None and mac.get("address"):
            return f"interface:{mac.get('address', '').lower()}"
    elif elem.tag == "disk":
        target = elem.find("target")
        if target is not None and target.get("dev"):
            return f"disk:{target.get('dev')}"
    return None


def device_type(key: str) -> str:
    """The device type ("interface", "disk") a key names."""
    return key.split(":", 1)[0]


def _device_elems(root: ET.Element) -> list[ET.Element]:
    devices = root.find("devices")
    return [] if devices is None else list(devices)


def _device_string(elem: ET.Element) -> str:
    tail, elem.tail = elem.tail, None
    try:
        return to_string(elem)
    finally:
        elem.tail = tail


def devices(text: str) -> list[DeviceRef]:
    root = parse_domain(text)
    return [
        DeviceRef(i, elem.tag, device_key(elem), _device_string(elem))
        for i, elem in enumerate(_device_elems(root))
    ]


def find_device(text: str, key: str) -> DeviceRef | None:
    for ref in devices(text):
        if ref.key == key:
            return ref
    return None


def replace_device(text: str, index: int, device_xml: str) -> str:
    """`text` with the device at `index` replaced by `device_xml`, order kept."""
    root = parse_domain(text)
    parent = root.find("devices")
    children = _device_elems(root)
    if parent is None or not 0 <= index < len(children):
        raise DomainXmlError(f"domain XML has no device #{index}")
    new = parse(device_xml, "device XML")
    old = children[index]
    new.tail = old.tail
    parent.remove(old)
    parent.insert(index, new)
    return to_string(root)


# --- metadata -----------------------------------------------------------------


def _props_elems(parent: ET.Element, props: dict[str, str]) -> None:
    for name, value in sorted(props.items()):
        elem = ET.SubElement(parent, _Q + "custom", name=name)
        elem.text = value


def _read_props(parent: ET.Element) -> dict[str, str]:
    return {e.get("name", ""): e.text or "" for e in parent.findall(_Q + "custom")}


def _vm_elem(metadata: ET.Element, meta: Metadata) -> None:
    vm = ET.SubElement(metadata, _Q + "vm")
    _props_elems(vm, meta.vm_props)
    for key, props in sorted(meta.device_props.items()):
        dev = ET.SubElement(vm, _Q + "device", key=key)
        _props_elems(dev, props)
    params = ET.SubElement(vm, _Q + "params")
    params.text = json.dumps(meta.params, sort_keys=True)


def set_metadata(text: str, meta: Metadata) -> str:
    """`text` with the agent's metadata element replaced by `meta`."""
    root = parse_domain(text)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        at = min(2, len(root))
        # Same layout as its neighbour, so hooks' diffs stay readable.
        metadata.tail = root[at - 1].tail if at else None
        root.insert(at, metadata)
    for old in metadata.findall(_Q + "vm"):
        metadata.remove(old)
    _vm_elem(metadata, meta)
    if metadata.tail and metadata.tail.strip() == "":
        ET.indent(metadata, level=1)
    return to_string(root)


def get_metadata(text: str) -> Metadata | None:
    """The agent's metadata in a domain XML, or None if the domain is not ours."""
    root = parse_domain(text)
    vm = root.find(f"metadata/{_Q}vm")
    if vm is None:
        return None
    device_props = {d.get("key", ""): _read_props(d) for d in vm.findall(_Q + "device")}
    params: dict[str, Any] = {}
    text_params = vm.findtext(_Q + "params")
    if text_params:
        try:
            loaded = json.loads(text_params)
        except (ValueError, RecursionError):  # a hook may have edited it
            loaded = {}
        if isinstance(loaded, dict):
            params = loaded
    return Metadata(_read_props(vm), device_props, params)


def metadata_element(meta: Metadata) -> str:
    """The agent's <vm> metadata element without a namespace, for libvirt's setMetadata
    (which puts the element and its children in NS itself)."""
    root = ET.Element("vm")
    for name, value in sorted(meta.vm_props.items()):
        ET.SubElement(root, "custom", name=name).text = value
    for key, props in sorted(meta.device_props.items()):
        dev = ET.SubElement(root, "device", key=key)
        for name, value in sorted(props.items()):
            ET.SubElement(dev, "custom", name=name).text = value
    ET.SubElement(root, "params").text = json.dumps(meta.params, sort_keys=True)
    return to_string(root)


# --- one device, for hot-plug -------------------------------------------------


def nic_xml(nic: NicSpec) -> str:
    out: list[str] = []
    _emit(_nic(nic), 0, out)
    return "\n".join(out)


def disk_xml(disk: DiskSpec, target: str) -> str:
    out: list[str] = []
    _emit(_disk(disk, target), 0, out)
    return "\n".join(out)


def free_disk_target(text: str, iface: str) -> str:
    """The first target dev name of bus `iface` the domain does not use (vda, vdb, ...)."""
    prefix = _DISK_PREFIX[iface]
    used = {t.get("dev") for t in parse_domain(text).iterfind("devices/disk/target")}
    n = 0
    while prefix + _letters(n) in used:
        n += 1
    return prefix + _letters(n)


def device_alias(elem: ET.Element) -> str | None:
    alias = elem.find("alias")
    return alias.get("name") if alias is not None else None


def device_elements(text: str) -> list[ET.Element]:
    """The live domain's device elements (interfaces, disks, ...), in order."""
    return _device_elems(parse_domain(text))


def element_string(elem: ET.Element) -> str:
    return _device_string(elem)


_FORMAT_NAMES = {v: k for k, v in _DISK_FORMAT.items()}


def _attr(elem: ET.Element, path: str, name: str) -> str | None:
    child = elem.find(path)
    return child.get(name) if child is not None else None


def device_view(elem: ET.Element, custom: dict[str, str]) -> dict[str, Any] | None:
    """A NIC or disk as VDSM's device dicts show it (plus its alias); None for others."""
    out: dict[str, Any]
    if elem.tag == "interface":
        source = elem.find("source")
        network = ""
        if source is not None:
            network = source.get("bridge") or source.get("network") or source.get("dev") or ""
        out = {"type": "interface", "device": elem.get("type", ""),
               "macAddr": (_attr(elem, "mac", "address") or "").lower(),
               "network": network, "nicModel": _attr(elem, "model", "type") or "",
               "linkActive": _attr(elem, "link", "state") != "down"}
    elif elem.tag == "disk":
        source = elem.find("source")
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or ""
        fmt = _attr(elem, "driver", "type") or "raw"
        out = {"type": "disk", "device": elem.get("device", "disk"), "path": path,
               "format": _FORMAT_NAMES.get(fmt, fmt), "iface": _attr(elem, "target", "bus") or "",
               "name": _attr(elem, "target", "dev") or "",
               "readonly": elem.find("readonly") is not None}
    else:
        return None
    alias = device_alias(elem)
    if alias:
        out["alias"] = alias
    out["custom"] = dict(custom)
    return out


def device_views(text: str, device_props: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The domain's NICs and disks as VDSM device dicts, with their custom properties."""
    out = []
    for elem in device_elements(text):
        view = device_view(elem, device_props.get(device_key(elem) or "", {}))
        if view is not None:
            out.append(view)
    return out


def add_device(text: str, device_xml: str) -> str:
    """`text` with `device_xml` appended to its <devices> (the agent's record of a
    hot-plugged device, without the address libvirt gave it)."""
    root = parse_domain(text)
    parent = root.find("devices")
    if parent is None:
        parent = ET.SubElement(root, "devices")
    parent.append(parse(device_xml, "device XML"))
    return to_string(root)


def remove_device(text: str, match: Callable[[ET.Element], bool]) -> str:
    """`text` without its first device for which `match` is true."""
    root = parse_domain(text)
    parent = root.find("devices")
    for elem in _device_elems(root):
        if match(elem):
            assert parent is not None
            parent.remove(elem)
            break
    return to_string(root)


def live_sizes(text: str) -> dict[str, int]:
    """{memSize (MiB), smp} as the domain has them now (DIMMs and vCPUs plugged live)."""
    root = parse_domain(text)
    out: dict[str, int] = {}
    memory = root.find("memory")
    if memory is not None and (memory.text or "").strip().isdigit():
        scale = {"kib": 1 / 1024, "k": 1 / 1024, "mib": 1, "m": 1, "gib": 1024, "g": 1024,
                 "b": 1 / 2**20, "bytes": 1 / 2**20}.get(memory.get("unit", "KiB").lower())
        if scale is not None:
            out["memSize"] = int(int(memory.text or 0) * scale)
    vcpu = root.find("vcpu")
    if vcpu is not None:
        count = vcpu.get("current") or (vcpu.text or "").strip()
        if count.isdigit():
            out["smp"] = int(count)
    return out
