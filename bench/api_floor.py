"""`hookvisor serve` with its create and destroy cut down to what no agent can skip.

A diagnostic for bench/api.py, never a way to run the agent: it tells how much
of the create+destroy figure is the agent's own verb work (parameter checks,
policy, metadata, the VM record, hook lookups, its log lines, the reply) and
how much a do-nothing agent would cost on the same transport.

    python bench/api_floor.py MODE serve ARGS...

MODE `libvirt`: create only builds the domain XML (the agent's builder) and
starts it through the agent's Host (createXML, the live XML read back);
destroy only destroys it. MODE `transport`: neither touches libvirt. Both
answer with the agent's own first replies, so payloads match in size. The RPC
server, dispatcher, its log lines and the libvirt event thread are the real ones.
"""

from __future__ import annotations

import sys
from typing import Any

from hookvisor.agent import lifecycle
from hookvisor.agent.context import Context
from hookvisor.cli.main import main
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.spec import VmSpec


def cut_down(mode: str) -> None:
    real_create, real_destroy = lifecycle.create, lifecycle.destroy
    replies: dict[str, dict[str, Any]] = {}

    def create(ctx: Context, params: Any) -> dict[str, Any]:
        if "create" not in replies:  # the first is real: its reply is the payload
            replies["create"] = real_create(ctx, params)
            return replies["create"]
        if mode == "libvirt":
            spec = VmSpec(params["vmId"], params["vmName"], params["memSize"], params["smp"])
            ctx.host.start(dx.build(spec, ctx.host.domain_type, ctx.host.arch), False,
                           spec.vm_id)
        return replies["create"]

    def destroy(ctx: Context, vm_id: object) -> dict[str, Any]:
        if "destroy" not in replies:
            replies["destroy"] = real_destroy(ctx, vm_id)
            return replies["destroy"]
        if mode == "libvirt":
            ctx.host.destroy(str(vm_id))
        return replies["destroy"]

    # core.Agent looks these up on every call.
    lifecycle.create, lifecycle.destroy = create, destroy


if __name__ == "__main__":
    mode = sys.argv.pop(1)
    if mode not in ("libvirt", "transport"):
        raise SystemExit(f"mode must be libvirt or transport, not {mode!r}")
    cut_down(mode)
    sys.exit(main(sys.argv[1:]))
