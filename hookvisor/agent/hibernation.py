"""hibernate (save the VM's memory to a file, the VM goes Down) and dehibernate
(`create` with `restoreState`: the VM comes back from that file).

The image carries the domain XML with the agent's metadata (custom properties
of the VM and its devices, the creation params), so a restore needs nothing
else, not even the agent that saved it. Neither a veto nor a failure touches
the image: a failed save leaves none behind, a failed restore leaves it as it was.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from hookvisor.agent.context import Context, host_failure
from hookvisor.agent.hookcalls import family
from hookvisor.agent.lifecycle import _live_xml, _locked
from hookvisor.agent.storage import allowed_path
from hookvisor.agent.vm import (
    DOWN,
    HIBERNATING,
    PAUSED,
    RESTORING,
    RESTORING_STATE,
    SAVING_STATE,
    UP,
    Vm,
    status_from_libvirt,
)
from hookvisor.errors import Code, VdsmError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import HostError

log = logging.getLogger("hookvisor.agent")

VM_HIBERNATE = family("vm_hibernate")
VM_DEHIBERNATE = family("vm_dehibernate")

# VDSM's exit message for a VM that went Down into a hibernation image.
SAVE_STATE = "SaveState"
_TRUE = {"true", "1", "yes"}


def hibernate(ctx: Context, vm_id: object, handle: object) -> dict[str, Any]:
    def body(vm: Vm) -> dict[str, Any]:
        path = allowed_path(handle, "hiberVolHandle", ctx.settings.storage_dirs, Code.GENERAL)
        if vm.status not in (UP, PAUSED):
            raise VdsmError(Code.GENERAL, f"VM {vm.vm_id} is {vm.status}: only an Up or "
                            "Paused VM can hibernate")
        if path.exists() and (not path.is_file() or path.stat().st_size > 0):
            # Never overwrite: it may be another VM's image.
            raise VdsmError(Code.GENERAL, f"hiberVolHandle: {path} already exists and is "
                            "not an empty file")
        existed = path.exists()

        def act(_xml: str) -> None:
            before = vm.status
            with vm.doing(HIBERNATING):
                vm.set_status(SAVING_STATE)
                try:
                    ctx.host.save(vm.vm_id, str(path))
                except HostError as e:
                    if not existed:  # no partial image (libvirt may leave one)
                        with contextlib.suppress(OSError):
                            path.unlink()
                    vm.set_status(_status_now(ctx, vm, before))
                    why = " (cancelled by a destroy)" if vm.interrupt.is_set() else ""
                    raise VdsmError(Code.GENERAL, f"libvirt could not save VM {vm.vm_id} "
                                    f"to {path}{why}: {e}") from None
                vm.exit_code = 0
                vm.exit_message = SAVE_STATE
                vm.set_status(DOWN)
            log.info("VM %s (%s) hibernated to %s", vm.vm_id, vm.name, path)

        ctx.hooks.around(VM_HIBERNATE, _live_xml(ctx, vm), vm, act)
        return {}

    result: dict[str, Any] = _locked(ctx, vm_id, body)
    return result


def _status_now(ctx: Context, vm: Vm, fallback: str) -> str:
    """The VM's status as libvirt has it after a failed save (it resumes the guest)."""
    try:
        return status_from_libvirt(*ctx.host.state(vm.vm_id))
    except HostError:
        return fallback


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.lower() in _TRUE


def _saved(ctx: Context, params: dict[str, Any]) -> tuple[Path, str]:
    path = allowed_path(params.get("restoreState"), "restoreState", ctx.settings.storage_dirs,
                        Code.CREATE_ERR)
    if not path.is_file():
        raise VdsmError(Code.CREATE_ERR, f"restoreState: no image at {path}")
    try:
        return path, ctx.host.saved_xml(str(path))
    except HostError as e:
        raise host_failure(e, Code.CREATE_ERR,
                           f"restoreState: cannot read the image {path}") from None


def _record(params: dict[str, Any], saved: str) -> Vm:
    """The VM as the image describes it: identity and the agent's metadata."""
    try:
        uuid, name = dx.identity(saved)
        meta = dx.get_metadata(saved) or dx.Metadata()
    except dx.DomainXmlError as e:
        raise VdsmError(Code.CREATE_ERR, f"restoreState: the image's XML: {e}") from None
    if not uuid or not name:
        raise VdsmError(Code.CREATE_ERR, "restoreState: the image's XML has no uuid or name")
    uuid = uuid.lower()
    asked = params.get("vmId")
    if asked is not None and str(asked).lower() != uuid:
        raise VdsmError(Code.CREATE_ERR, f"vmId: {asked} differs from the image's VM {uuid}")
    saved_params = dict(meta.params)
    started = saved_params.pop("startedAt", None)
    vm_props = meta.vm_props
    if not vm_props and isinstance(params.get("custom"), dict):
        vm_props = {str(k): str(v) for k, v in params["custom"].items()}
    return Vm(uuid, name, saved_params or {"vmId": uuid, "vmName": name}, dict(vm_props),
              dict(meta.device_props),
              started_at=float(started) if isinstance(started, int | float) else time.time())


def restore(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Dehibernate: the VM of the image at params["restoreState"] runs again."""
    path, saved = _saved(ctx, params)
    vm = _record(params, saved)
    env = {"FROM_SNAPSHOT": "True" if _flag(params.get("restoreFromSnapshot")) else "False"}
    # Locked before it is listed: a destroy racing this restore waits for it.
    with vm.lock, vm.doing(RESTORING):
        ctx.registry.add(vm)  # `exist` if the vmId is in use
        vm.set_status(RESTORING_STATE)

        def act(_xml: str) -> str:
            try:
                live = ctx.host.restore(str(path), vm.vm_id)
            except HostError as e:
                raise host_failure(e, Code.CREATE_ERR, f"libvirt could not restore VM "
                                   f"{vm.vm_id} from {path}") from None
            vm.xml = live
            vm.params["devices"] = dx.device_views(live, vm.device_props)
            vm.set_status(_status_now(ctx, vm, UP))
            return live

        try:
            ctx.hooks.around(VM_DEHIBERNATE, saved, vm, act, extra_env=env,
                             after=lambda live: live)
        except BaseException:
            ctx.registry.remove(vm)
            raise
        log.info("VM %s (%s) restored from %s", vm.vm_id, vm.name, path)
        return vm.full()
