"""create, destroy, pause, cont: each runs its events of SPEC §2 around libvirt.

Every verb holds the VM's own lock for its whole length, so operations on one
VM are serialised and operations on different VMs run in parallel. A `before_`
veto or a libvirt failure leaves the VM as it was; an `after_` hook never
changes the outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from hookvisor.agent import diskprep
from hookvisor.agent.context import Context
from hookvisor.agent.hookcalls import HookSetupError, describe_os_error, family
from hookvisor.agent.params import CreateRequest, parse_create
from hookvisor.agent.policy import ClientPolicy
from hookvisor.agent.vm import DESTROYING, DOWN, HIBERNATING, PAUSED, STARTING, UP, Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks import launchflags
from hookvisor.props.errors import PropertyError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import HostError
from hookvisor.virt.spec import VmSpec

log = logging.getLogger("hookvisor.agent")

VM_START = family("vm_start")
DEVICE_CREATE = family("device_create")
VM_PAUSE = family("vm_pause")
VM_CONT = family("vm_cont")
VM_DESTROY = family("vm_destroy")
DEVICE_DESTROY = family("device_destroy")


def metadata_of(vm: Vm) -> dx.Metadata:
    return dx.Metadata(vm.vm_props, vm.device_props, {**vm.params, "startedAt": vm.started_at})


def custom_devices(vm: Vm, xml: str) -> list[tuple[dx.DeviceRef, dict[str, str]]]:
    """The devices of `xml` that carry custom properties, in device order."""
    if not vm.device_props:
        return []
    try:
        refs = dx.devices(xml)
    except dx.DomainXmlError:
        return []
    return [(r, vm.device_props[r.key]) for r in refs if r.key in vm.device_props]


def run_after(ctx: Context, event: str, xml: str, vm: Vm,
              device_props: dict[str, str] | None = None) -> None:
    """An after_ event: whatever happens in it, the operation stands."""
    ctx.hooks.run_after(event, xml, vm, device_props)


def after_destroy(ctx: Context, vm: Vm, xml: str) -> None:
    for ref, props in custom_devices(vm, xml):
        run_after(ctx, DEVICE_DESTROY.after, ref.xml, vm, props)
    run_after(ctx, VM_DESTROY.after, xml, vm)


def _locked(ctx: Context, vm_id: object, body: Callable[[Vm], Any]) -> Any:
    vm = ctx.registry.get(vm_id)
    with vm.lock:
        if vm.removed:
            raise VdsmError(Code.NO_VM, f"no VM with vmId {vm_id!r}")
        return body(vm)


# --- create -------------------------------------------------------------------


def _device_props(ctx: Context, req: CreateRequest) -> dict[str, dict[str, str]]:
    """The device custom props of a request, by device key."""
    if req.spec is None:
        return dict(req.xml_device_props)
    device_props: dict[str, dict[str, str]] = {}
    if not any(dev.custom for dev in req.spec.devices):
        return device_props
    # Keys as libvirt will see them (generated targets): from the XML itself.
    xml = dx.build(req.spec, ctx.host.domain_type, ctx.host.arch)
    # The spec's devices come first, in order (the console the builder adds last).
    refs = dx.devices(xml)[:len(req.spec.devices)]
    for ref, dev in zip(refs, req.spec.devices, strict=True):
        if dev.custom and ref.key is not None:
            device_props[ref.key] = dict(dev.custom)
    return device_props


def _initial(ctx: Context, req: CreateRequest, vm: Vm) -> str:
    """The domain XML before any hook, the agent's metadata already in it."""
    if req.spec is None:
        assert req.xml is not None
        return dx.set_metadata(req.xml, metadata_of(vm))
    return dx.build(req.spec, ctx.host.domain_type, ctx.host.arch, metadata_of(vm))


def _check_props(ctx: Context, req: CreateRequest,
                 device_props: dict[str, dict[str, str]]) -> None:
    if not req.vm_props and not any(device_props.values()):
        return  # nothing to check: no need to read the definitions
    devices = [(dx.device_type(key), props) for key, props in device_props.items()]
    try:
        ctx.props.check(vm=req.vm_props, devices=devices)
    except PropertyError as e:
        raise VdsmError(Code.CREATE_ERR, f"bad custom properties: {e}") from None


def _device_hooks(ctx: Context, vm: Vm, xml: str) -> tuple[str, bool]:
    """before_device_create per device with custom props; each result replaces its device.

    Also says whether a hook changed a device's identity (its props were re-keyed).
    """
    rekeyed = False
    for ref, props in custom_devices(vm, xml):
        new = ctx.hooks.run(DEVICE_CREATE.before, ref.xml, vm, props)
        if new == ref.xml:
            continue
        try:
            xml = dx.replace_device(xml, ref.index, new)
            new_key = dx.device_key(dx.parse(new, "device XML"))
        except dx.DomainXmlError as e:
            raise VdsmError(Code.HOOK_ERROR, f"before_device_create for {ref.key}: {e}") from None
        if ref.key is not None and new_key is not None and new_key != ref.key:
            # A hook changed the device's identity (MAC, target): follow it.
            vm.device_props[new_key] = vm.device_props.pop(ref.key)
            rekeyed = True
    return xml, rekeyed


def _run_dir_error(ctx: Context, vm: Vm, e: OSError) -> VdsmError:
    # The path the OS named (launch flags, a hook's data file), else the flags' dir.
    # Every file create() writes is in the run dir; libvirt's failures are HostError.
    path = e.filename or launchflags.flags_dir(ctx.run_dir)
    return VdsmError(Code.CREATE_ERR, f"run dir: {path}: {e.strerror or e} "
                     f"(VM {vm.vm_id} not started)")


def _vm_start_hooks(ctx: Context, vm: Vm, xml: str, paused: bool) -> tuple[str, bool]:
    """before_vm_start, with the launch flags a hook may change (start paused)."""
    if not ctx.hooks.wanted(VM_START.before):
        return xml, paused  # no script to read or change the flags: no file to keep
    # No file means no flags: only a paused start needs one written (saves I/O per create).
    # An OSError here (a read-only or full run dir) is createErr: see create().
    if paused:
        launchflags.write_flags(ctx.run_dir, vm.vm_id, launchflags.START_PAUSED)
    else:
        launchflags.clear_flags(ctx.run_dir, vm.vm_id)  # one a killed agent left
    try:
        xml = ctx.hooks.run(VM_START.before, xml, vm)
        flags = launchflags.read_flags(ctx.run_dir, vm.vm_id)
    finally:
        try:
            launchflags.clear_flags(ctx.run_dir, vm.vm_id)
        except OSError as e:
            log.warning("VM %s: cannot remove its launch flags: %s", vm.vm_id, e)
    return xml, bool(flags & launchflags.START_PAUSED)


def _start(ctx: Context, vm: Vm, xml: str, paused: bool) -> tuple[str, bool]:
    try:
        xml, rekeyed = _device_hooks(ctx, vm, xml)
        hooked, paused = _vm_start_hooks(ctx, vm, xml, paused)
    except HookSetupError as e:
        raise VdsmError(Code.CREATE_ERR, e.message) from None
    except OSError as e:  # the launch flags file, in the run dir
        raise VdsmError(Code.CREATE_ERR, f"cannot prepare VM {vm.vm_id}: "
                        f"{describe_os_error(e)}") from None
    if hooked != xml or rekeyed:
        try:
            # Ours again, whatever a hook did to it (and with re-keyed devices).
            hooked = dx.set_metadata(hooked, metadata_of(vm))
        except dx.DomainXmlError as e:
            raise VdsmError(Code.CREATE_ERR, f"domain XML after hooks: {e}") from None
    xml = hooked
    try:
        return ctx.host.start(xml, paused, vm.vm_id), paused
    except HostError as e:
        raise VdsmError(Code.CREATE_ERR, f"libvirt could not start VM {vm.vm_id}: {e}") from None


def _known_id(ctx: Context, params: Any) -> None:
    """`exist` for a vmId in use, before the other params are even looked at (VDSM order)."""
    vm_id = params.get("vmId") if isinstance(params, dict) else None
    if isinstance(vm_id, str) and ctx.registry.find(vm_id.lower()) is not None:
        raise VdsmError(Code.EXIST, f"VM {vm_id} already exists")


def client_policy(ctx: Context) -> ClientPolicy:
    """The operator's settings and the host's limits a `create` is held to."""
    settings = ctx.settings
    return ClientPolicy(
        storage_dirs=settings.storage_dirs,
        allow_qemu_args=settings.allow_client_qemu_args,
        max_vm_name=settings.max_vm_name,
        max_vcpus=ctx.host.max_vcpus(),
        host_memory_mib=ctx.host.memory_mib(),
        emulators=ctx.host.emulators(),
    )


def ready_spec(ctx: Context, spec: VmSpec) -> VmSpec:
    """`spec` with what a live DIMM, vCPU or ticket change needs (the settings')."""
    settings = ctx.settings
    host_max = ctx.host.max_vcpus()
    max_vcpus = settings.max_vcpus_per_vm
    if host_max:
        max_vcpus = min(max_vcpus, host_max)
    max_mem = settings.max_memory_mib or 4 * spec.mem_mib
    graphics = settings.graphics if settings.graphics in ("vnc", "spice") else "none"
    return dataclasses.replace(spec, max_vcpus=max(max_vcpus, spec.smp),
                               max_mem_mib=max_mem, mem_slots=settings.memory_slots,
                               graphics=graphics)


def create(ctx: Context, params: Any) -> dict[str, Any]:
    _known_id(ctx, params)
    req = parse_create(params, client_policy(ctx))
    if req.spec is not None:
        req = dataclasses.replace(req, spec=ready_spec(ctx, req.spec))
    device_props = _device_props(ctx, req)
    _check_props(ctx, req, device_props)
    vm = Vm(req.vm_id, req.name, req.params, dict(req.vm_props), device_props,
            started_at=time.time())
    if req.spec is not None:
        # Paths resolved and checked: after_disk_prepare may swap them (localdisk).
        prepared = diskprep.prepare_create(ctx, vm, req.spec)
        if prepared is not req.spec:
            req = dataclasses.replace(req, spec=prepared)
    xml = _initial(ctx, req, vm)
    # Locked before it is listed: a destroy racing this create waits for it to finish.
    with vm.lock, vm.doing(STARTING):
        ctx.registry.add(vm)
        try:
            live, paused = _start(ctx, vm, xml, req.launch_paused)
        except OSError as e:
            # The run dir (launch flags, hooks' data files) failed: the client's error
            # names the path, not a traceback.
            ctx.registry.remove(vm)
            raise _run_dir_error(ctx, vm, e) from None
        except BaseException:
            # Nothing was defined (transient domain), so forgetting the record is all.
            ctx.registry.remove(vm)
            raise
        vm.xml = live
        vm.set_status(PAUSED if paused else UP)
        log.info("VM %s (%s) started%s", vm.vm_id, vm.name, " paused" if paused else "")
        run_after(ctx, VM_START.after, live, vm)
        for ref, props in custom_devices(vm, live):
            run_after(ctx, DEVICE_CREATE.after, ref.xml, vm, props)
        return vm.full()


# --- destroy, pause, cont -----------------------------------------------------


def _live_xml(ctx: Context, vm: Vm) -> str:
    try:
        vm.xml = ctx.host.xml(vm.vm_id)
    except HostError as e:
        log.warning("VM %s: no live XML (%s); using the last known", vm.vm_id, e)
    return vm.xml


def destroy(ctx: Context, vm_id: object) -> dict[str, Any]:
    def body(vm: Vm) -> dict[str, Any]:
        if vm.status == DOWN:
            # It died on its own (or was hibernated); its after_ hooks ran then.
            ctx.registry.remove(vm)
            ctx.host.forget(vm.vm_id)
            return {}
        hooked = (vm.device_props or ctx.hooks.wanted(VM_DESTROY.before)
                  or ctx.hooks.wanted(VM_DESTROY.after))
        # The live XML is only a payload: with no script to read it, spare libvirt the call.
        xml = _live_xml(ctx, vm) if hooked else vm.xml
        devices = [(ref.xml, props) for ref, props in custom_devices(vm, xml)]

        def act(_xml: str) -> None:
            with vm.doing(DESTROYING):
                try:
                    ctx.host.destroy(vm.vm_id)
                except HostError as e:
                    if not e.no_domain:
                        raise VdsmError(Code.DESTROY_ERR, f"libvirt could not destroy VM "
                                        f"{vm.vm_id}: {e}") from None
                vm.exit_message = "destroyed by the agent"
                vm.set_status(DOWN)
            log.info("VM %s (%s) destroyed", vm.vm_id, vm.name)

        if hooked:
            ctx.hooks.around(VM_DESTROY, xml, vm, act, devices=devices,
                             device_fam=DEVICE_DESTROY)
        else:
            act(xml)  # no script for either event (just asked): no chain to look up again
        ctx.registry.remove(vm)
        return {}

    # A verb of this VM waiting on the guest (hot-unplug) gives up for a destroy.
    target = ctx.registry.get(vm_id)
    target.interrupt.set()
    ctx.removals.wake(target.vm_id)
    if target.operation == HIBERNATING:
        # A save can be cancelled (the guest runs on, then this destroy stops it).
        try:
            ctx.host.abort_job(target.vm_id)
        except HostError as e:
            log.info("VM %s: the save in progress could not be cancelled: %s",
                     target.vm_id, e)
    try:
        result: dict[str, Any] = _locked(ctx, vm_id, body)
    finally:
        target.interrupt.clear()
    return result


def _pause_or_cont(ctx: Context, vm_id: object, verb: str) -> dict[str, Any]:
    fam = VM_PAUSE if verb == "pause" else VM_CONT

    def body(vm: Vm) -> dict[str, Any]:
        if vm.status == DOWN:
            raise VdsmError(Code.GENERAL, f"VM {vm.vm_id} is Down")

        def act(_xml: str) -> None:
            try:
                if verb == "pause":
                    ctx.host.suspend(vm.vm_id)
                else:
                    ctx.host.resume(vm.vm_id)
            except HostError as e:
                code = Code.NO_VM if e.no_domain else Code.GENERAL
                raise VdsmError(code, f"libvirt could not {verb} VM {vm.vm_id}: {e}") from None
            vm.set_status(PAUSED if verb == "pause" else UP)

        ctx.hooks.around(fam, _live_xml(ctx, vm), vm, act)
        return {}

    result: dict[str, Any] = _locked(ctx, vm_id, body)
    return result


def pause(ctx: Context, vm_id: object) -> dict[str, Any]:
    return _pause_or_cont(ctx, vm_id, "pause")


def cont(ctx: Context, vm_id: object) -> dict[str, Any]:
    return _pause_or_cont(ctx, vm_id, "cont")
