"""Adopting, at agent start, the domains libvirt runs that carry the agent's metadata.

Start hooks are not run again: those VMs were started (and hooked) by an
earlier agent process. Domains without our metadata are not ours; left alone.
"""

from __future__ import annotations

import logging
import time

from hookvisor.agent.context import Context
from hookvisor.agent.vm import Vm, status_from_libvirt
from hookvisor.errors import VdsmError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import HostError

log = logging.getLogger("hookvisor.agent")


def recover(ctx: Context) -> int:
    """Adopt what libvirt runs for us; returns how many VMs were adopted."""
    try:
        domains = ctx.host.active_domains()
    except HostError as e:
        log.error("recovery: cannot list libvirt domains: %s", e)
        return 0
    adopted = 0
    for dom in domains:
        try:
            meta = dx.get_metadata(dom.xml)
        except dx.DomainXmlError:
            continue
        if meta is None:
            continue
        params = dict(meta.params)
        started = params.pop("startedAt", None)
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
