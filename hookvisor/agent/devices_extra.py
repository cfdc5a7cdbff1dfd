"""hotplugMemory, setNumberOfCpus and setTicket: VDSM's verbs with hook points
the seeds do not list (lib/vdsm/virt/vm.py; SPEC §2's last rows).

Each holds its own VM's lock only and answers VDSM's own code for a libvirt
failure (hotplugMem 70, setNumberOfCpusErr 60, ticketErr 18), its message
naming libvirt's cause. A VM built from params is made ready for them at
create (lifecycle.ready_spec): DIMM slots, a NUMA cell and ACPI; a vCPU maximum above
its count; a loopback console with an expired placeholder password.

The console password never reaches a log line, a hook or a hook record: the
hooks get libvirt's XML without VIR_DOMAIN_XML_SECURE (no passwd in it), and
no message here carries the device XML sent to libvirt.
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from typing import Any

from hookvisor.agent.context import Context, host_call
from hookvisor.agent.hookcalls import family
from hookvisor.agent.hotplug import _live, _locked, _running
from hookvisor.agent.params import _INT_RE, _Problems, _props, show
from hookvisor.agent.vm import HOTPLUGGING, UPDATING
from hookvisor.errors import Code, VdsmError
from hookvisor.virt import domain_xml as dx

log = logging.getLogger("hookvisor.agent")

MEMORY_HOTPLUG = family("memory_hotplug")
SET_NUM_OF_CPUS = family("set_num_of_cpus")
VM_SET_TICKET = family("vm_set_ticket")

_MAX_PASSWORD = 1024  # SPICE takes long ones; VNC's 8 is libvirt's to refuse
_MAX_TTL = 10 * 365 * 24 * 3600
_CONN_ACTIONS = ("disconnect", "keep", "fail")


def _int(value: Any, where: str, low: int, high: int, code: Code) -> int:
    if isinstance(value, str) and _INT_RE.match(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VdsmError(code, f"{where}: expected an integer from {low} to {high}, "
                        f"got {show(value)}")
    return value


# --- memory -------------------------------------------------------------------------


def dimm_xml(size_mib: int, node: int) -> str:
    """VDSM's memory device (vmdevices.core.Memory): a DIMM of `size_mib` on `node`."""
    return (f"<memory model='dimm'>\n  <target>\n    <size unit='KiB'>{size_mib * 1024}</size>\n"
            f"    <node>{node}</node>\n  </target>\n</memory>")


def hotplug_memory(ctx: Context, params: Any) -> dict[str, Any]:
    code = Code.HOTPLUG_MEM
    vm = _running(ctx, params, code)
    mem = params.get("memory")
    if not isinstance(mem, dict):
        raise VdsmError(code, f"memory: expected a struct {{size, node}}, got {show(mem)}")
    size = _int(mem.get("size"), "memory.size", 1, 16 * 1024 * 1024, code)
    node = _int(mem.get("node", 0), "memory.node", 0, 1023, code)

    def body() -> dict[str, Any]:
        def act(final: str) -> str:
            try:
                elem = dx.parse(final, "before_memory_hotplug's device XML")
            except dx.DomainXmlError as e:
                raise VdsmError(Code.HOOK_ERROR, str(e)) from None
            if elem.tag != "memory":
                raise VdsmError(Code.HOOK_ERROR, f"before_memory_hotplug left <{elem.tag}>, "
                                "not a <memory> device")
            with vm.doing(HOTPLUGGING):
                host_call(lambda: ctx.host.attach(vm.vm_id, final), code,
                          f"libvirt could not hot-plug {size} MiB into VM {vm.vm_id}",
                          no_vm=True)
                added = _size_mib(elem) or size
                vm.params["memSize"] = int(vm.params.get("memSize") or 0) + added
                # The agent's record follows without a libvirt round trip; a restarted
                # agent reads the sizes from the live XML (recovery), so no metadata write.
                if vm.xml:
                    vm.xml = dx.add_device(vm.xml, final)
            log.info("VM %s: %d MiB of memory plugged (node %s)", vm.vm_id, added, node)
            return final

        ctx.hooks.around(MEMORY_HOTPLUG, dimm_xml(size, node), vm, act, after=lambda x: x)
        return vm.full()

    return _locked(vm, code, body)


def _size_mib(elem: ET.Element) -> int:
    """The DIMM's size in MiB as its XML says (a hook may have changed it); 0 if unreadable."""
    size = elem.find("target/size")
    if size is None or not (size.text or "").strip().isdigit():
        return 0
    factor = {"b": 1 / 2**20, "bytes": 1 / 2**20, "k": 1 / 1024, "kib": 1 / 1024, "m": 1,
              "mib": 1, "g": 1024, "gib": 1024}.get(size.get("unit", "KiB").lower(), 0)
    return int(int(size.text or 0) * factor)


# --- vCPUs --------------------------------------------------------------------------


def set_number_of_cpus(ctx: Context, vm_id: Any, count: Any) -> dict[str, Any]:
    code = Code.SET_NUMBER_OF_CPUS_ERR
    vm = ctx.registry.get(vm_id)
    number = _int(count, "numberOfCpus", 1, 4096, code)

    def body() -> dict[str, Any]:
        def act(_data: str) -> None:
            with vm.doing(UPDATING):
                host_call(lambda: ctx.host.set_vcpus(vm.vm_id, number), code,
                          f"libvirt could not set VM {vm.vm_id}'s vCPUs to {number}",
                          no_vm=True)
                vm.params["smp"] = number  # recovery reads it from the live XML
            log.info("VM %s: %d vCPUs", vm.vm_id, number)

        ctx.hooks.around(SET_NUM_OF_CPUS, "", vm, act)
        return vm.full()

    return _locked(vm, code, body)


# --- console ticket -----------------------------------------------------------------


def set_ticket(ctx: Context, vm_id: Any, password: Any, ttl: Any,
               existing_conn_action: Any = "disconnect", params: Any = None) -> None:
    """The console password and its expiry on the live graphics device (VDSM's setTicket)."""
    code = Code.TICKET_ERR
    vm = ctx.registry.get(vm_id)
    if not isinstance(password, str) or len(password) > _MAX_PASSWORD or "\0" in password:
        # Never the value itself: it is a secret.
        raise VdsmError(code, f"password: expected a string of at most {_MAX_PASSWORD} "
                        "characters")
    seconds = _int(ttl, "ttl", -_MAX_TTL, _MAX_TTL, code)
    action = existing_conn_action if existing_conn_action is not None else "disconnect"
    if action not in _CONN_ACTIONS:
        raise VdsmError(code, f"existingConnAction: expected one of "
                        f"{', '.join(_CONN_ACTIONS)}, got {show(action)}")
    problems = _Problems()
    env = _props(params, "params", problems)
    if problems.items:
        raise VdsmError(code, "bad setTicket params: " + "; ".join(problems.items))

    def body() -> dict[str, Any]:
        # Without VIR_DOMAIN_XML_SECURE: no password in it. Fresh for the hooks; else
        # the agent's own record will do (libvirt only needs the device's type).
        hooked = ctx.hooks.wanted(VM_SET_TICKET.before) or ctx.hooks.wanted(
            VM_SET_TICKET.after)
        domxml = _live(ctx, vm, code) if hooked or not vm.xml else vm.xml
        graphics = next((e for e in dx.device_elements(domxml) if e.tag == "graphics"), None)
        if graphics is None:
            raise VdsmError(code, f"VM {vm.vm_id} has no graphics device")
        kind = graphics.get("type", "")
        graphics.set("passwd", password)
        if seconds > 0:
            graphics.set("passwdValidTo", time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + seconds)))
        else:
            graphics.attrib.pop("passwdValidTo", None)  # VDSM: no expiry
        if kind == "spice":
            graphics.set("connected", action)
        device = dx.element_string(graphics)

        def act(_data: str) -> None:
            with vm.doing(UPDATING):
                host_call(lambda: ctx.host.update_device(vm.vm_id, device), code,
                          f"libvirt could not set the {kind} ticket of VM {vm.vm_id}",
                          no_vm=True)
            log.info("VM %s: %s ticket set (ttl %ds)", vm.vm_id, kind, seconds)

        # Both events: vetoes=False in the catalogue, so a failing hook is logged only.
        ctx.hooks.around(VM_SET_TICKET, domxml, vm, act, extra_env=env)
        return {}

    _locked(vm, code, body)
