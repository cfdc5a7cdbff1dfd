"""hostdevListByCaps: the host's devices as VDSM lists them (lib/vdsm/common/hostdev.py).

libvirt's node devices, each as `name -> {"params": {capability, vendor,
vendor_id, product, product_id, parent, iommu_group, numa_node, driver,
address, ...}}`, filtered by capability (libvirt's own listAllDevices flags,
as VDSM does); `after_hostdev_list_by_caps` gets that JSON and its result is
the reply (VDSM: a failure is logged, the list stands).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from hookvisor.agent.context import Context
from hookvisor.agent.hookcalls import uses
from hookvisor.errors import Code, VdsmError
from hookvisor.virt.host import HostError

log = logging.getLogger("hookvisor.agent")

(AFTER_LIST,) = uses("after_hostdev_list_by_caps")

# VDSM's capability names -> libvirt's listAllDevices flags.
_FLAGS: dict[str, int] = {
    "system": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_SYSTEM,
    "pci": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV,
    "usb_device": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV,
    "usb": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_INTERFACE,
    "net": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET,
    "scsi_host": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_SCSI_HOST,
    "scsi_target": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_SCSI_TARGET,
    "scsi": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_SCSI,
    "storage": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_STORAGE,
    "fc_host": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_FC_HOST,
    "vports": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_VPORTS,
    "scsi_generic": libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_SCSI_GENERIC,
}
# The address fields VDSM reports per capability.
_ADDRESS = {"pci": ("domain", "bus", "slot", "function"),
            "scsi": ("host", "bus", "target", "lun"),
            "usb_device": ("bus", "device")}


def device_params(xml: str) -> dict[str, Any]:
    """One node device's params, as VDSM's _process_device_params makes them."""
    root = ET.fromstring(xml)
    cap = root.find("capability")
    capability = cap.get("type", "unknown") if cap is not None else "unknown"
    params: dict[str, Any] = {"capability": capability, "is_assignable": "true"}
    name = root.findtext("name") or ""
    if name != "computer" and root.findtext("parent"):
        params["parent"] = root.findtext("parent")
    driver = root.findtext("driver/name")
    if driver:
        params["driver"] = driver
    if cap is None:
        return params
    for child in cap:
        if child.tag in ("vendor", "product", "interface"):
            if "id" in child.attrib:
                params[child.tag + "_id"] = child.get("id")
            if child.text:
                params[child.tag] = child.text
    if capability == "storage" and cap.findtext("model"):
        params["product"] = cap.findtext("model")
    if capability == "scsi_generic" and cap.findtext("char"):
        params["udev_path"] = cap.findtext("char")
    if capability in _ADDRESS:
        params["address"] = {f: cap.findtext(f) for f in _ADDRESS[capability]
                             if cap.findtext(f) is not None}
    if capability == "pci":
        group = cap.find("iommuGroup")
        if group is not None:
            params["iommu_group"] = group.get("number")
        numa = cap.find("numa")
        if numa is not None:
            params["numa_node"] = numa.get("node")
        sub = cap.find("capability")
        if sub is not None and sub.get("type") in ("pci-bridge", "cardbus-bridge"):
            params["is_assignable"] = "false"
    if capability == "net":
        for field in ("interface", "address"):
            if cap.findtext(field):
                params[field] = cap.findtext(field)
    return params


# Parsed params by device XML (VDSM keeps its device tree by a hash of the XMLs too):
# the host's devices rarely change, their parse was a third of the verb's own cost.
_PARSED: dict[str, dict[str, Any]] = {}
_PARSED_MAX = 4096


def _parsed(xml: str) -> dict[str, Any]:
    params = _PARSED.get(xml)
    if params is None:
        params = device_params(xml)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[xml] = params
    # A copy (the address struct too): the cache must not change with a reply.
    out = dict(params)
    if isinstance(out.get("address"), dict):  # a net device's address is its MAC
        out["address"] = dict(out["address"])
    return out


def list_by_caps(ctx: Context, caps: Any = None) -> dict[str, Any]:
    if caps is None:
        caps = []
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise VdsmError(Code.GENERAL, f"caps: expected a list of capability names, got "
                        f"{type(caps).__name__}")
    unknown = [c for c in caps if c not in _FLAGS]
    if unknown:
        raise VdsmError(Code.GENERAL, f"caps: unknown capability {unknown[0][:40]!r} (known: "
                        f"{', '.join(sorted(_FLAGS))})")
    flags = 0
    for cap in caps:
        flags |= _FLAGS[cap]
    try:
        found = ctx.host.node_devices(flags)
    except HostError as e:
        raise VdsmError(Code.UNAVAIL if e.disconnected else Code.GENERAL,
                        f"libvirt could not list the host's devices: {e}") from None
    devices: dict[str, Any] = {}
    for name, xml in found:
        try:
            devices[name] = {"params": _parsed(xml)}
        except ET.ParseError:
            continue
    try:
        result = ctx.hooks.run_json(AFTER_LIST, devices)
    except VdsmError as e:  # its chain could not even start: VDSM logs and goes on
        log.error("%s: %s", AFTER_LIST, e.message)
        return devices
    if not isinstance(result, dict):
        return devices  # a hook left JSON that is not a device map: the list stands
    return result
