"""hotplugNic/hotunplugNic, hotplugDisk/hotunplugDisk and vmUpdateDevice (SPEC §4).

Each holds its own VM's lock only. Device custom properties are checked
against CustomDeviceProperties before any hook; the before_ hook may change
the device XML (the engine checks it still parses with the same root); a
libvirt failure runs the after_..._fail hook and answers the verb's own code.
An unplug is done when the guest released the device (DEVICE_REMOVED), not
when the detach call returns; if it does not within `unplug_timeout`, the
client is told so and the device stays listed as libvirt has it.

After every change the VM's live metadata (device custom properties) follows,
so a restarted agent, a migration or a hibernation image sees the devices as
they are.
"""

from __future__ import annotations

import logging
import random
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hookvisor.agent import diskprep
from hookvisor.agent.context import Context, host_call, host_failure
from hookvisor.agent.hookcalls import Family, family
from hookvisor.agent.lifecycle import client_policy, metadata_of
from hookvisor.agent.params import _bool, _disk, _nic, _Problems, _props
from hookvisor.agent.policy import check_device
from hookvisor.agent.vm import HOTPLUGGING, PAUSED, UP, UPDATING, Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.props.errors import PropertyError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import HostError

log = logging.getLogger("hookvisor.agent")

UPDATE_DEVICE = family("update_device", fail=True)


@dataclass(frozen=True)
class Kind:
    tag: str  # the device element: interface, disk
    param: str  # its params key: nic, drive
    plug: Family
    unplug: Family
    plug_code: Code
    unplug_code: Code


NIC = Kind("interface", "nic", family("nic_hotplug", fail=True),
           family("nic_hotunplug", fail=True), Code.HOTPLUG_NIC, Code.HOTUNPLUG_NIC)
DISK = Kind("disk", "drive", family("disk_hotplug", fail=True),
            family("disk_hotunplug", fail=True), Code.HOTPLUG_DISK, Code.HOTUNPLUG_DISK)


# --- shared -----------------------------------------------------------------------


def _running(ctx: Context, params: Any, code: Code) -> Vm:
    if not isinstance(params, dict):
        raise VdsmError(code, f"params: expected a struct, got {type(params).__name__}")
    return ctx.registry.get(params.get("vmId"))


def _locked(vm: Vm, code: Code, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with vm.lock:
        if vm.removed:
            raise VdsmError(Code.NO_VM, f"no VM with vmId {vm.vm_id!r}")
        if vm.status not in (UP, PAUSED):
            raise VdsmError(code, f"VM {vm.vm_id} is {vm.status}: devices change only on an "
                            "Up or Paused VM")
        return body()


def _live(ctx: Context, vm: Vm, code: Code) -> str:
    vm.xml = host_call(lambda: ctx.host.xml(vm.vm_id), code,
                       f"libvirt has no live XML of VM {vm.vm_id}")
    return vm.xml


def refresh(ctx: Context, vm: Vm) -> None:
    """The VM's device list and live metadata as libvirt has them (after an update, or
    an unplug that did not complete)."""
    try:
        vm.xml = ctx.host.xml(vm.vm_id)
    except HostError as e:
        log.warning("VM %s: no live XML after a device change: %s", vm.vm_id, e)
        return
    changed(ctx, vm, True)


def changed(ctx: Context, vm: Vm, props_changed: bool) -> None:
    """vm.xml has the VM's devices now: the device list follows, and the live
    metadata when device properties changed (a restart, a migration or a
    hibernation image read them from there)."""
    vm.params["devices"] = dx.device_views(vm.xml, vm.device_props)
    if not props_changed:
        return  # a metadata write costs libvirt a status file write: only when needed
    try:
        ctx.host.set_metadata(vm.vm_id, dx.metadata_element(metadata_of(vm)), dx.PREFIX,
                              dx.NS)
    except HostError as e:
        # The device change stands; a restart would see stale device properties.
        log.warning("VM %s: cannot update its metadata: %s", vm.vm_id, e)


def _known(ctx: Context, vm: Vm, code: Code) -> str:
    """The VM's XML as the agent last had it from libvirt, plus its own device changes
    since (no libvirt call); libvirt stays the judge of the change itself."""
    return vm.xml or _live(ctx, vm, code)


def _with_alias(elem: ET.Element) -> None:
    """A user alias (VDSM's `ua-<uuid>`) unless it has one: the device's name from
    before the attach, so the agent need not ask libvirt what it was called."""
    if elem.find("alias") is None:
        ET.SubElement(elem, "alias", name=f"ua-{uuidlib.uuid4()}")


def _check_props(ctx: Context, kind: str, props: dict[str, str], code: Code) -> None:
    if not props:
        return
    try:
        ctx.props.check(devices=[(kind, props)])
    except PropertyError as e:
        raise VdsmError(code, f"bad custom properties: {e}") from None


def _find(xml: str, tag: str, match: Callable[[ET.Element], bool]) -> ET.Element | None:
    for elem in dx.device_elements(xml):
        if elem.tag == tag and match(elem):
            return elem
    return None


def _from_xml(ctx: Context | None, text: Any, tag: str, code: Code) -> ET.Element:
    """The `tag` device of a client's `xml` param: `<domain><devices>…` or the device.

    With `ctx` (a device to attach) it is held to the client policy as a client's
    whole domain is (agent/policy.py); without, it only names a device to unplug.
    """
    if not isinstance(text, str):
        raise VdsmError(code, f"xml: expected a string, got {type(text).__name__}")
    try:
        root = dx.parse(text, "xml")
    except dx.DomainXmlError as e:
        raise VdsmError(code, str(e)) from None
    elem = root if root.tag == tag else (
        root.find(f"devices/{tag}") if root.tag == "domain" else None)
    if elem is None:
        raise VdsmError(code, f"xml: no <{tag}> device in it (root <{root.tag}>)")
    if ctx is not None:
        problems = check_device(elem, client_policy(ctx))
        if problems:
            raise VdsmError(code, "xml: " + "; ".join(problems))
        _trusted(elem, code)
    return elem


def _trusted(elem: ET.Element, code: Code) -> None:
    """What a hot-plug refuses beyond the client policy: no program to run
    (<script>), disks only as files (held to storage_dirs by the client policy)
    or CD-ROMs without media: the policy does not look into network disks.
    """
    if elem.find(".//script") is not None:
        raise VdsmError(code, f"xml: <{elem.tag}> with a <script>: a client may not "
                        "name a program for libvirt to run")
    if elem.tag == "disk" and elem.get("type", "file") != "file" \
            and elem.find("source") is not None:
        raise VdsmError(code, f"xml: <disk type='{elem.get('type')}'>: only file disks "
                        "(under storage_dirs) may be plugged")


def _random_mac() -> str:
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


# --- plug -------------------------------------------------------------------------


def _new_nic(ctx: Context, params: dict[str, Any], live: str) -> tuple[str, dict[str, str]]:
    code = NIC.plug_code
    problems = _Problems()
    if params.get("xml") is not None:
        elem = _from_xml(ctx, params["xml"], "interface", code)
        if elem.find("mac") is None:  # its identity for metadata and unplug
            ET.SubElement(elem, "mac", address=_random_mac())
        custom = _props(params.get("custom"), "custom", problems)
        _with_alias(elem)
        xml = dx.element_string(elem)
    else:
        dev = params.get("nic")
        if not isinstance(dev, dict):
            raise VdsmError(code, f"nic: expected a device struct (or xml), got {dev!r}")
        spec, _shown = _nic(dev, "nic", problems)
        custom = spec.custom
        xml = _aliased(dx.nic_xml(spec))
    problems.check(code, "hotplugNic")
    return xml, custom


def _new_disk(ctx: Context, params: dict[str, Any], live: str,
              vm: Vm | None = None) -> tuple[str, dict[str, str]]:
    code = DISK.plug_code
    problems = _Problems()
    if params.get("xml") is not None:
        elem = _from_xml(ctx, params["xml"], "disk", code)
        custom = _props(params.get("custom"), "custom", problems)
        target_elem = elem.find("target")
        if target_elem is None or not target_elem.get("dev"):
            raise VdsmError(code, "xml: the disk has no <target dev=…>")
        _with_alias(elem)
        xml = dx.element_string(elem)
    else:
        dev = params.get("drive")
        if not isinstance(dev, dict):
            raise VdsmError(code, f"drive: expected a device struct (or xml), got {dev!r}")
        spec, shown = _disk(dev, "drive", problems, client_policy(ctx))
        problems.check(code, "hotplugDisk")
        custom = spec.custom
        name = dev.get("name")
        target = name if isinstance(name, str) and name else dx.free_disk_target(
            live, spec.iface)
        if vm is not None:
            # Path checked: after_disk_prepare may swap it (VDSM's localdisk hook).
            spec, _shown = diskprep.prepare(ctx, vm, spec, shown, target, "drive", code)
        xml = _aliased(dx.disk_xml(spec, target))
    problems.check(code, "hotplugDisk")
    return xml, custom


def _aliased(xml: str) -> str:
    elem = dx.parse(xml, "device XML")
    _with_alias(elem)
    return dx.element_string(elem)


def hotplug(ctx: Context, params: Any, kind: Kind) -> dict[str, Any]:
    code = kind.plug_code
    vm = _running(ctx, params, code)

    def body() -> dict[str, Any]:
        live = _known(ctx, vm, code)
        if kind is NIC:
            xml, custom = _new_nic(ctx, params, live)
        else:
            xml, custom = _new_disk(ctx, params, live, vm)
        key = dx.device_key(dx.parse(xml, "device XML"))
        # Not dx.find_device: that serialises every device of the domain.
        if key is not None and _find(live, kind.tag,
                                     lambda e: dx.device_key(e) == key) is not None:
            raise VdsmError(code, f"VM {vm.vm_id} already has the device {key}")
        _check_props(ctx, kind.tag, custom, code)

        def act(final: str) -> str:
            new_key = dx.device_key(dx.parse(final, "device XML"))
            with vm.doing(HOTPLUGGING):
                host_call(lambda: ctx.host.attach(vm.vm_id, final), code,
                          f"libvirt could not attach the {kind.tag} to VM {vm.vm_id}")
                if custom and new_key is not None:
                    vm.device_props[new_key] = dict(custom)
                vm.xml = dx.add_device(vm.xml or _live(ctx, vm, code), final)
                changed(ctx, vm, bool(custom and new_key is not None))
            log.info("VM %s: %s %s plugged", vm.vm_id, kind.tag, new_key)
            return final

        ctx.hooks.around(kind.plug, xml, vm, act, device_props=custom, after=lambda dev: dev)
        return vm.full()

    return _locked(vm, code, body)


# --- unplug -----------------------------------------------------------------------


def _which(params: dict[str, Any], kind: Kind) -> Callable[[ET.Element], bool]:
    """What names the device to unplug: alias, MAC (NIC), path or target name (disk)."""
    code = kind.unplug_code
    if params.get("xml") is not None:
        elem = _from_xml(None, params["xml"], kind.tag, code)
        key = dx.device_key(elem)
        alias = dx.device_alias(elem)
        if key is None and alias is None:
            raise VdsmError(code, f"xml: the {kind.tag} has neither an identity "
                            "(MAC / target dev) nor an alias")
        return lambda e: (alias is not None and dx.device_alias(e) == alias) or (
            key is not None and dx.device_key(e) == key)
    dev = params.get(kind.param)
    if not isinstance(dev, dict):
        raise VdsmError(code, f"{kind.param}: expected a device struct (or xml), got {dev!r}")
    alias = dev.get("alias")
    if isinstance(alias, str) and alias:
        return lambda e: dx.device_alias(e) == alias
    if kind is NIC:
        mac = dev.get("macAddr")
        if isinstance(mac, str) and mac:
            return lambda e: dx.device_key(e) == f"interface:{mac.lower()}"
        raise VdsmError(code, "nic: give its macAddr or alias")
    name = dev.get("name")
    if isinstance(name, str) and name:
        return lambda e: dx.device_key(e) == f"disk:{name}"
    path = dev.get("path")
    if isinstance(path, str) and path:
        return lambda e: (e.find("source") is not None
                          and e.find("source").get("file") == path)  # type: ignore[union-attr]
    raise VdsmError(code, "drive: give its alias, name (target dev) or path")


def hotunplug(ctx: Context, params: Any, kind: Kind) -> dict[str, Any]:
    code = kind.unplug_code
    vm = _running(ctx, params, code)

    def body() -> dict[str, Any]:
        match = _which(params, kind)
        elem = _find(_known(ctx, vm, code), kind.tag, match)
        if elem is None:  # maybe plugged outside the agent: libvirt knows
            elem = _find(_live(ctx, vm, code), kind.tag, match)
        if elem is None:
            raise VdsmError(code, f"VM {vm.vm_id} has no such {kind.tag}")
        key = dx.device_key(elem)
        alias = dx.device_alias(elem)
        xml = dx.element_string(elem)
        props = vm.device_props.get(key or "", {})

        def act(_xml: str) -> None:
            with vm.doing(HOTPLUGGING):
                _detach(ctx, vm, kind, xml, alias, key)
            log.info("VM %s: %s %s unplugged", vm.vm_id, kind.tag, key or alias)

        ctx.hooks.around(kind.unplug, xml, vm, act, device_props=props)
        return vm.full()

    return _locked(vm, code, body)


def _detach(ctx: Context, vm: Vm, kind: Kind, xml: str, alias: str | None,
            key: str | None) -> None:
    code = kind.unplug_code
    deadline = time.monotonic() + ctx.settings.unplug_timeout
    if alias is not None:
        ctx.removals.expect(vm.vm_id, alias)
    try:
        ctx.host.detach(vm.vm_id, xml)
    except HostError as e:
        if alias is not None:
            ctx.removals.cancel(vm.vm_id, alias)
        raise host_failure(e, code, f"libvirt could not detach the {kind.tag} from VM "
                           f"{vm.vm_id}") from None
    removed = alias is not None and ctx.removals.wait(vm.vm_id, alias, deadline)
    if removed:
        had_props = key is not None and vm.device_props.pop(key, None) is not None
        vm.xml = dx.remove_device(vm.xml, lambda e: _same(e, key, alias))
        changed(ctx, vm, had_props)
        return
    gone = _gone(ctx, vm, kind, key, alias)  # an event missed, or no alias to wait for
    if gone and key is not None:
        vm.device_props.pop(key, None)
    refresh(ctx, vm)
    if gone:
        return
    if vm.interrupt.is_set():
        raise VdsmError(code, f"unplug of {alias} from VM {vm.vm_id} interrupted by a "
                        "destroy")
    raise VdsmError(code, f"the guest did not release {kind.tag} {alias} within "
                    f"{ctx.settings.unplug_timeout:g}s (unplug_timeout; no DEVICE_REMOVED from "
                    "libvirt): it is still attached")


def _gone(ctx: Context, vm: Vm, kind: Kind, key: str | None, alias: str | None) -> bool:
    """Whether libvirt's live XML no longer has the device (an event missed)."""
    try:
        live = ctx.host.xml(vm.vm_id)
    except HostError:
        return False
    return _find(live, kind.tag, lambda e: _same(e, key, alias)) is None


def _same(elem: ET.Element, key: str | None, alias: str | None) -> bool:
    return ((alias is not None and dx.device_alias(elem) == alias)
            or (key is not None and dx.device_key(elem) == key))


# --- update -------------------------------------------------------------------------


def update_device(ctx: Context, vm_id: Any, params: Any) -> dict[str, Any]:
    """vmUpdateDevice for an interface: link state, network, custom properties."""
    code = Code.UPDATE_DEVICE
    vm = ctx.registry.get(vm_id)
    if not isinstance(params, dict):
        raise VdsmError(code, f"params: expected a struct, got {type(params).__name__}")
    if params.get("deviceType", "interface") != "interface":
        raise VdsmError(code, f"deviceType: only interface can be updated, got "
                        f"{params.get('deviceType')!r}")

    def body() -> dict[str, Any]:
        match = _which({"nic": params}, NIC)
        live = _live(ctx, vm, code)
        elem = _find(live, "interface", match)
        if elem is None:
            raise VdsmError(code, f"VM {vm.vm_id} has no such interface")
        key = dx.device_key(elem)
        problems = _Problems()
        link = params.get("linkActive")
        if link is not None:
            active = _bool(link, "linkActive", problems, True)
            node = elem.find("link")
            if node is None:
                node = ET.SubElement(elem, "link")
            node.set("state", "up" if active else "down")
        network = params.get("network")
        if network is not None:
            source = elem.find("source")
            if not isinstance(network, str) or not network or source is None:
                problems.add("network", f"expected a {elem.get('type')} name, got {network!r}")
            else:
                for attr in ("bridge", "network"):
                    if attr in source.attrib:
                        source.set(attr, network)
        custom = (_props(params.get("custom"), "custom", problems)
                  if "custom" in params else vm.device_props.get(key or "", {}))
        problems.check(code, "vmUpdateDevice")
        _check_props(ctx, "interface", custom, code)
        xml = dx.element_string(elem)

        def act(final: str) -> str:
            with vm.doing(UPDATING):
                host_call(lambda: ctx.host.update_device(vm.vm_id, final), code,
                          f"libvirt could not update the interface of VM {vm.vm_id}")
                if key is not None:
                    if custom:
                        vm.device_props[key] = dict(custom)
                    else:
                        vm.device_props.pop(key, None)
                refresh(ctx, vm)
            ref = dx.find_device(vm.xml, key) if key else None
            return ref.xml if ref is not None else final

        ctx.hooks.around(UPDATE_DEVICE, xml, vm, act, device_props=custom,
                         after=lambda dev: dev)
        return vm.full()

    return _locked(vm, code, body)
