"""after_disk_prepare: a drive whose path is resolved and checked, offered to hooks.

VDSM runs it per drive once the volume is prepared (vm.py
_preparePathsForDrives) with the drive dict as JSON, and merges what the hooks
leave into the drive: its `localdisk` hook swaps the path (and format) for a
local copy. Here it runs per disk of a params-built `create` and per drive of
a `hotplugDisk` given as a dict; the changed drive is checked again against
storage_dirs (a hook is not a way around the client policy) and is what goes
into the domain XML. A failing hook, or a result that is not a drive, vetoes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hookvisor.agent.context import Context
from hookvisor.agent.hookcalls import uses
from hookvisor.agent.storage import allowed_path
from hookvisor.agent.vm import Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.spec import DiskSpec, VmSpec

(AFTER_DISK_PREPARE,) = uses("after_disk_prepare")

_FORMATS = ("raw", "cow")


def drive_dict(spec: DiskSpec, shown: dict[str, Any], name: str | None) -> dict[str, Any]:
    """VDSM's drive dict for the hook: the drive as the client gave it, normalised."""
    drive = {**shown, "diskType": "file", "path": spec.path or "", "format": spec.format,
             "iface": spec.iface, "readonly": spec.readonly}
    if name:
        drive["name"] = name
    return drive


def prepare(ctx: Context, vm: Vm, spec: DiskSpec, shown: dict[str, Any],
            name: str | None, where: str, code: Code) -> tuple[DiskSpec, dict[str, Any]]:
    """(the drive as the hooks left it, its shown dict); `spec` as is without a hook.

    `code`: the verb's error for a changed path outside storage_dirs.
    """
    if not spec.path or not ctx.hooks.wanted(AFTER_DISK_PREPARE):
        return spec, shown
    sent = drive_dict(spec, shown, name)
    text = ctx.hooks.run(AFTER_DISK_PREPARE, json.dumps(sent), vm)  # a failure: hookError
    try:
        got = json.loads(text)
    except ValueError:
        raise VdsmError(Code.HOOK_ERROR, f"{AFTER_DISK_PREPARE} for {where}: the hooks left "
                        "JSON that does not parse") from None
    if not isinstance(got, dict):
        raise VdsmError(Code.HOOK_ERROR, f"{AFTER_DISK_PREPARE} for {where}: the hooks left "
                        f"a {type(got).__name__}, not a drive dict")
    drive = {**sent, **got}  # VDSM: drive.update(modified)
    if drive.get("diskType", "file") != "file":
        raise VdsmError(Code.HOOK_ERROR, f"{AFTER_DISK_PREPARE} for {where}: diskType "
                        f"{str(drive.get('diskType'))[:40]!r}: only file drives are supported")
    fmt = drive.get("format")
    if fmt not in _FORMATS:
        raise VdsmError(Code.HOOK_ERROR, f"{AFTER_DISK_PREPARE} for {where}: format "
                        f"{str(fmt)[:40]!r} is not raw or cow")
    path = drive.get("path")
    if path != spec.path:
        # A hook's path is held to the client policy: not a way around storage_dirs.
        path = str(allowed_path(path, f"{where}.path (set by {AFTER_DISK_PREPARE})",
                                ctx.settings.storage_dirs, code))
    assert isinstance(path, str)
    new = dataclasses.replace(spec, path=path, format=str(fmt))
    return new, {**shown, "path": path, "format": fmt}


def prepare_create(ctx: Context, vm: Vm, spec: VmSpec) -> VmSpec:
    """A params-built VM's disks through after_disk_prepare; vm.params follows."""
    if not ctx.hooks.wanted(AFTER_DISK_PREPARE):
        return spec
    shown_devices = vm.params.get("devices") or []
    devices = list(spec.devices)
    for i, (dev, name) in enumerate(zip(devices, dx.disk_targets(spec), strict=True)):
        if not isinstance(dev, DiskSpec) or i >= len(shown_devices):
            continue
        new, shown = prepare(ctx, vm, dev, shown_devices[i], name, f"devices[{i}]",
                             Code.CREATE_ERR)
        devices[i] = new
        shown_devices[i] = shown
    return dataclasses.replace(spec, devices=tuple(devices))
