"""Adopting, at agent start, the domains libvirt runs that carry the agent's metadata;
and reconciling the agent's VMs with libvirt after a lost connection comes back.

Start hooks are not run again: those VMs were started (and hooked) by an
earlier agent process. Domains without our metadata are not ours; left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from hookvisor.agent.context import Context
from hookvisor.agent.vm import DOWN, WAIT_FOR_LAUNCH, Vm, status_from_libvirt
from hookvisor.errors import VdsmError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import DomainInfo, HostError

log = logging.getLogger("hookvisor.agent")


def recover(ctx: Context) -> int:
    """Adopt what libvirt runs for us; returns how many VMs were adopted."""
    try:
        domains = ctx.host.active_domains()
    except HostError as e:
        log.error("recovery: cannot list libvirt domains: %s", e)
        return 0
    return adopt(ctx, domains)


def adopt(ctx: Context, domains: Iterable[DomainInfo]) -> int:
    """Add to the registry the domains carrying our metadata that it lacks."""
    adopted = 0
    for dom in domains:
        if ctx.registry.find(dom.uuid) is not None:
            continue
        try:
            meta = dx.get_metadata(dom.xml)
        except dx.DomainXmlError:
            continue
        if meta is None:
            continue
        params = dict(meta.params)
        started = params.pop("startedAt", None)
        # The devices as they are now (hot-plugged ones too), not as created.
        params["devices"] = dx.device_views(dom.xml, meta.device_props)
        # Likewise its size (hotplugMemory, setNumberOfCpus change it live).
        params.update({k: v for k, v in dx.live_sizes(dom.xml).items() if k in params})
        vm = Vm(
            vm_id=dom.uuid,
            name=dom.name,
            params=params,
            vm_props=meta.vm_props,
            device_props=meta.device_props,
            status=status_from_libvirt(dom.state, dom.reason),
            xml=dom.xml,
            started_at=float(started) if isinstance(started, int | float) else time.time(),
        )
        try:
            ctx.registry.add(vm)
        except VdsmError:
            continue  # already known (recover called twice)
        adopted += 1
        log.info("recovery: adopted VM %s (%s), %s", vm.vm_id, vm.name, vm.status)
    return adopted


def reconcile(ctx: Context, gone: Callable[[Vm], None],
              busy: Callable[[Vm, Callable[[], None]], None] | None = None) -> tuple[int, int]:
    """After a reconnect: (VMs found dead, domains adopted).

    A VM libvirt no longer runs is handed to `gone` under its lock (which makes
    it Down and runs its after_ destroy hooks); one still running takes the
    status libvirt reports; a domain of ours the agent does not know is adopted.
    A VM whose lock a long operation holds (a hot-unplug waiting for its guest)
    is handed to `busy` with the check to run once it is free, if `busy` is
    given, so that one VM does not hold the reconcile of all.
    HostError if the connection is lost again meanwhile (nothing half-judged:
    the list is read whole before any VM is touched).
    """
    domains = ctx.host.active_domains()
    by_uuid = {d.uuid: d for d in domains}
    died = 0
    for vm in ctx.registry.all():
        if busy is not None and not vm.lock.acquire(blocking=False):
            # Judged later from libvirt's state then, not from this list.
            busy(vm, _later(ctx, vm, gone))
            continue
        if busy is None:
            vm.lock.acquire()
        try:
            died += _judge(ctx, vm, by_uuid.get(vm.vm_id), gone)
        finally:
            vm.lock.release()
    # A domain listed then destroyed by a verb in flight is no longer ours to adopt.
    return died, adopt(ctx, [d for d in domains if ctx.registry.find(d.uuid) is None
                             and _still_there(ctx, d.uuid)])


def _later(ctx: Context, vm: Vm, gone: Callable[[Vm], None]) -> Callable[[], None]:
    def work() -> None:
        try:
            _judge(ctx, vm, None, gone)
        except HostError as e:
            # Lost again: the next reconnect's reconcile judges it.
            log.warning("VM %s: not reconciled: %s", vm.vm_id, e)

    return work


def _judge(ctx: Context, vm: Vm, dom: DomainInfo | None, gone: Callable[[Vm], None]) -> bool:
    """Under vm.lock: whether the VM died; its status follows libvirt's otherwise."""
    # Down already, or a verb of the agent is on it (a create's domain may
    # not be listed yet): not ours to judge.
    if vm.removed or vm.operation is not None or vm.status in (DOWN, WAIT_FOR_LAUNCH):
        return False
    if dom is not None:
        status = status_from_libvirt(dom.state, dom.reason)
    else:
        # Not listed: maybe started after the list was read (a create that
        # held this lock); libvirt has the last word.
        try:
            status = status_from_libvirt(*ctx.host.state(vm.vm_id))
        except HostError as e:
            if not e.no_domain:
                raise
            status = DOWN
    if status == DOWN:
        gone(vm)
        return True
    if status != vm.status:
        log.info("VM %s: %s -> %s (while libvirt was away)", vm.vm_id, vm.status, status)
        vm.set_status(status)
    return False


def _still_there(ctx: Context, uuid: str) -> bool:
    try:
        ctx.host.state(uuid)
    except HostError as e:
        if e.no_domain:
            return False
        raise
    return True
