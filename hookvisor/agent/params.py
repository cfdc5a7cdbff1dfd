"""Checks VDSM-style `create` params and turns them into a CreateRequest.

Every problem names the parameter (`memSize`, `devices[1].macAddr`, ...); all
problems of one request are reported together, as `createErr`.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

from hookvisor.agent.images import chain_problem
from hookvisor.agent.policy import ClientPolicy, check_domain, check_sizes, path_problem
from hookvisor.errors import Code, VdsmError
from hookvisor.virt import domain_xml
from hookvisor.virt.spec import DeviceSpec, DiskSpec, NicSpec, VmSpec

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
# VDSM calls the virtio NIC model "pv".
_NIC_MODELS = {"virtio": "virtio", "pv": "virtio", "e1000": "e1000", "rtl8139": "rtl8139"}
_INT_RE = re.compile(r"^\s*[0-9]{1,18}\s*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Bounds on the parts of a request nothing else bounds (the transport bounds sizes).
MAX_DEVICES = 256
MAX_PROPS = 128  # custom properties in one struct
MAX_PROP_NAME = 128
MAX_PROP_VALUE = 4096  # as the property registry's own cap on a value
MAX_NAME = 255  # a bridge or network name
_SHOW_MAX = 80


def show(value: Any) -> str:
    """A client's value in a message, never longer than a line."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= _SHOW_MAX else text[:_SHOW_MAX] + "..."


@dataclass(frozen=True)
class CreateRequest:
    vm_id: str
    name: str
    spec: VmSpec | None  # None when the client gave a complete `xml`
    xml: str | None
    vm_props: dict[str, str]
    # For `xml` requests: device custom properties found in the XML's own metadata.
    xml_device_props: dict[str, dict[str, str]]
    launch_paused: bool
    # The params as list(full=True) shows them: defaults filled in, MACs generated.
    params: dict[str, Any]


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def check(self, code: Code, verb: str) -> None:
        """Refuse the request with every problem found so far, if there is one."""
        if self.items:
            raise VdsmError(code, f"bad {verb} params: " + "; ".join(self.items))


def _bool(value: Any, where: str, problems: _Problems, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    problems.add(where, f"expected true or false, got {show(value)}")
    return default


def _pos_int(value: Any, where: str, problems: _Problems, default: int | None) -> int | None:
    if value is None:
        if default is None:
            problems.add(where, "missing")
        return default
    if isinstance(value, bool):
        problems.add(where, f"expected a positive integer, got {show(value)}")
        return default
    if isinstance(value, str) and _INT_RE.match(value):
        value = int(value)
    if not isinstance(value, int) or value <= 0:
        problems.add(where, f"expected a positive integer, got {show(value)}")
        return default
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...], default: str,
            problems: _Problems) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        problems.add(where, f"expected one of {', '.join(choices)}, got {show(value)}")
        return default
    return str(value)


def _props(value: Any, where: str, problems: _Problems) -> dict[str, str]:
    """A custom property dict: names and values are strings (numbers are accepted as text)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(where, f"expected a struct of NAME: value, got {type(value).__name__}")
        return {}
    if len(value) > MAX_PROPS:
        problems.add(where, f"{len(value)} properties, more than {MAX_PROPS}")
        return {}
    out: dict[str, str] = {}
    for name, val in value.items():
        name = str(name)
        if not name or len(name) > MAX_PROP_NAME or _CONTROL_RE.search(name):
            problems.add(where, f"expected property names of 1 to {MAX_PROP_NAME} printable "
                         f"characters, got {show(name)}")
            continue
        if isinstance(val, bool) or not isinstance(val, str | int | float):
            problems.add(f"{where}.{name}", f"expected a string value, got {show(val)}")
            continue
        text = str(val)
        if len(text) > MAX_PROP_VALUE:
            problems.add(f"{where}.{name}", f"{len(text)} characters, more than "
                         f"{MAX_PROP_VALUE}")
            continue
        out[name] = text
    return out


def _random_mac() -> str:
    # 52:54:00 is the locally administered prefix QEMU and libvirt use.
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def _disk(dev: dict[str, Any], where: str, problems: _Problems,
          policy: ClientPolicy) -> tuple[DiskSpec, dict[str, Any]]:
    kind = _choice(dev.get("device"), f"{where}.device", ("disk", "cdrom"), "disk", problems)
    path = dev.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        problems.add(f"{where}.path", f"expected an absolute file path, got {show(path)}")
        path = None
    elif path is not None:
        problem = path_problem(path, policy.storage_roots(), policy.storage_dirs, file=True)
        if problem:
            problems.add(f"{where}.path", problem)
            path = None
    if kind == "disk" and dev.get("path") is None:
        problems.add(f"{where}.path", "missing (a disk needs a file)")
    fmt = _choice(dev.get("format"), f"{where}.format", ("raw", "cow"), "raw", problems)
    if path is not None and fmt == "cow":
        # The files its qcow2 header names are opened too (hookvisor.agent.images).
        roots = policy.storage_roots()
        problem = chain_problem(path, "qcow2",
                                lambda p: path_problem(p, roots, policy.storage_dirs))
        if problem:
            problems.add(f"{where}.path", problem)
    iface = _choice(dev.get("iface"), f"{where}.iface", ("virtio", "scsi", "ide"),
                    "ide" if kind == "cdrom" else "virtio", problems)
    readonly = _bool(dev.get("readonly"), f"{where}.readonly", problems, kind == "cdrom")
    boot = None
    if dev.get("bootOrder") not in (None, ""):
        boot = _pos_int(dev.get("bootOrder"), f"{where}.bootOrder", problems, None)
    custom = _props(dev.get("custom"), f"{where}.custom", problems)
    spec = DiskSpec(kind, path, fmt, iface, readonly or kind == "cdrom", boot, custom)
    shown = {"type": "disk", "device": kind, "path": path or "", "format": fmt,
             "iface": iface, "readonly": spec.readonly, "custom": custom}
    if boot is not None:
        shown["bootOrder"] = boot
    return spec, shown


def _nic(dev: dict[str, Any], where: str, problems: _Problems) -> tuple[NicSpec, dict[str, Any]]:
    kind = _choice(dev.get("device"), f"{where}.device", ("bridge", "network"), "bridge",
                   problems)
    network = dev.get("network")
    if (not isinstance(network, str) or not network or len(network) > MAX_NAME
            or _CONTROL_RE.search(network)):
        problems.add(f"{where}.network", f"expected a {kind} name, got {show(network)}")
        network = ""
    mac = dev.get("macAddr")
    if mac is None:
        mac = _random_mac()
    elif not isinstance(mac, str) or not _MAC_RE.match(mac):
        problems.add(f"{where}.macAddr", f"expected a MAC address like 52:54:00:12:34:56, "
                     f"got {show(mac)}")
        mac = _random_mac()
    model_in = dev.get("nicModel", "virtio")
    model = _NIC_MODELS.get(model_in) if isinstance(model_in, str) else None
    if model is None:
        problems.add(f"{where}.nicModel", f"expected one of virtio, pv, e1000, rtl8139, "
                     f"got {show(model_in)}")
        model = "virtio"
    link = _bool(dev.get("linkActive"), f"{where}.linkActive", problems, True)
    custom = _props(dev.get("custom"), f"{where}.custom", problems)
    spec = NicSpec(kind, network, mac.lower(), model, link, custom)
    shown = {"type": "interface", "device": kind, "network": network, "macAddr": spec.mac,
             "nicModel": model, "linkActive": link, "custom": custom}
    return spec, shown


def _devices(value: Any, problems: _Problems,
             policy: ClientPolicy) -> tuple[list[DeviceSpec], list[dict[str, Any]]]:
    specs: list[DeviceSpec] = []
    shown: list[dict[str, Any]] = []
    if value is None:
        return specs, shown
    if not isinstance(value, list):
        problems.add("devices", f"expected a list of structs, got {type(value).__name__}")
        return specs, shown
    if len(value) > MAX_DEVICES:
        problems.add("devices", f"{len(value)} devices, more than {MAX_DEVICES}")
        return specs, shown
    for i, dev in enumerate(value):
        where = f"devices[{i}]"
        if not isinstance(dev, dict):
            problems.add(where, f"expected a struct, got {type(dev).__name__}")
            continue
        kind = dev.get("type")
        if kind == "disk":
            spec, shown_dev = _disk(dev, where, problems, policy)
        elif kind == "interface":
            spec, shown_dev = _nic(dev, where, problems)  # type: ignore[assignment]
        else:
            problems.add(f"{where}.type", f"expected disk or interface, got {show(kind)}")
            continue
        specs.append(spec)
        shown.append(shown_dev)
    return specs, shown


def _vm_id(value: Any, problems: _Problems) -> str:
    if value is None:
        problems.add("vmId", "missing")
        return ""
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        problems.add("vmId", f"expected a UUID, got {show(value)}")
        return ""


def _name(value: Any, problems: _Problems, policy: ClientPolicy, where: str = "vmName") -> str:
    if (not isinstance(value, str) or not value.strip() or "/" in value
            or _CONTROL_RE.search(value)):
        problems.add(where, "missing" if value is None
                     else f"expected a non-empty name without '/' or control characters, "
                     f"got {show(value)}")
        return ""
    if len(value) > policy.max_vm_name:
        problems.add(where, f"{len(value)} characters, more than max_vm_name "
                     f"({policy.max_vm_name})")
        return ""
    return value


def _bounded(value: int | None, where: str, most: int, what: str,
             problems: _Problems) -> None:
    if value is not None and most and value > most:
        problems.add(where, f"{value} is more than {what} ({most})")


def _fail(problems: _Problems) -> None:
    problems.check(Code.CREATE_ERR, "create")


def parse_create(params: Any, policy: ClientPolicy | None = None) -> CreateRequest:
    """Raise VdsmError(createErr) naming every bad or missing parameter.

    `policy`: the operator's limits (default: the strictest, no storage dir).
    """
    policy = policy or ClientPolicy()
    problems = _Problems()
    if not isinstance(params, dict):
        problems.add("params", f"expected a struct, got {type(params).__name__}")
        _fail(problems)
    vm_props = _props(params.get("custom"), "custom", problems)
    paused = _bool(params.get("launchPaused"), "launchPaused", problems, False)
    if params.get("xml") is not None:
        return _from_xml(params, vm_props, paused, problems, policy)
    vm_id = _vm_id(params.get("vmId"), problems)
    name = _name(params.get("vmName"), problems, policy)
    mem = _pos_int(params.get("memSize"), "memSize", problems, None)
    smp = _pos_int(params.get("smp"), "smp", problems, 1)
    # Before anything is built: a huge smp once grew the agent until the OOM killer came.
    _bounded(mem, "memSize", policy.host_memory_mib, "the host's memory in MiB", problems)
    _bounded(smp, "smp", policy.max_vcpus, "the host's maximum vCPUs", problems)
    specs, shown = _devices(params.get("devices"), problems, policy)
    _fail(problems)
    assert mem is not None and smp is not None
    spec = VmSpec(vm_id, name, mem, smp, tuple(specs))
    normalised = {"vmId": vm_id, "vmName": name, "memSize": mem, "smp": smp,
                  "custom": vm_props, "launchPaused": paused, "devices": shown}
    return CreateRequest(vm_id, name, spec, None, vm_props, {}, paused, normalised)


def _from_xml(params: dict[str, Any], vm_props: dict[str, str], paused: bool,
              problems: _Problems, policy: ClientPolicy) -> CreateRequest:
    text = params["xml"]
    if not isinstance(text, str):
        problems.add("xml", f"expected the domain XML as a string, got {type(text).__name__}")
        _fail(problems)
    try:
        root = domain_xml.parse_domain(text)
        xml_uuid, xml_name = domain_xml.identity(text)
        meta = domain_xml.get_metadata(text)
    except domain_xml.DomainXmlError as e:
        problems.add("xml", str(e))
        _fail(problems)
        raise AssertionError("unreachable") from None
    # What the client's own domain may ask of the host (hooks are not held to it).
    for problem in check_domain(root, policy) + check_sizes(root, policy):
        problems.add("xml", problem)
    vm_id = ""
    if params.get("vmId") is not None:
        vm_id = _vm_id(params.get("vmId"), problems)
        if vm_id and xml_uuid and vm_id != xml_uuid.lower():
            problems.add("vmId", f"{vm_id} differs from the XML's <uuid> {xml_uuid}")
    elif xml_uuid:
        vm_id = _vm_id(xml_uuid, problems)
    else:
        problems.add("vmId", "missing (neither in params nor as the XML's <uuid>)")
    if not xml_name:
        problems.add("xml", "the domain has no <name>")
    else:
        _name(xml_name, problems, policy, "xml: <name>")
    _fail(problems)
    if not xml_uuid or xml_uuid.lower() != vm_id:
        text = domain_xml.set_uuid(text, vm_id)
    device_props = meta.device_props if meta else {}
    if not vm_props and meta:
        vm_props = meta.vm_props
    assert xml_name is not None
    normalised = {"vmId": vm_id, "vmName": xml_name, "custom": vm_props,
                  "launchPaused": paused}
    return CreateRequest(vm_id, xml_name, None, text, vm_props, device_props, paused,
                         normalised)
