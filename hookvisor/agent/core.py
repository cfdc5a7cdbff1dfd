"""The Agent: VDSM's verbs as plain methods that return payloads and raise VdsmError.

It also listens to libvirt's lifecycle events: a VM that stops outside the
agent (crash, `virsh destroy`, guest power-off) turns `Down`, gets its
after_ destroy hooks once, and stays listed until a client calls `destroy`
(VDSM's behaviour: the engine collects the exit reason, then destroys).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hookvisor.agent import lifecycle, recovery, reports
from hookvisor.agent.context import Context, PropertyChecker
from hookvisor.agent.hookcalls import HookCalls
from hookvisor.agent.network import NetworkService
from hookvisor.agent.registry import VmRegistry
from hookvisor.agent.vm import DOWN, PAUSED, UP, Vm, status_from_libvirt
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.records import RunRecords
from hookvisor.virt.host import (
    EVENT_RESUMED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    Host,
    HostError,
    stop_reason,
)

log = logging.getLogger("hookvisor.agent")

# The lifecycle events that may change a VM's status.
_WATCHED = (EVENT_STOPPED, EVENT_SUSPENDED, EVENT_RESUMED)


class Agent:
    def __init__(
        self,
        host: Host,
        hooks: HookCalls,
        props: PropertyChecker,
        run_dir: Path,
        cluster_version: str,
        records: RunRecords | None = None,
    ) -> None:
        self.ctx = Context(host, VmRegistry(), hooks, props, run_dir)
        self.cluster_version = cluster_version
        self.records = records
        self.started_at = time.time()
        self._recovering = True
        # Event follow-ups run hooks and take VM locks: never on libvirt's event thread.
        self._events = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vm-events")
        self._closed = threading.Event()
        # Host networking; None: setupNetworks answers noimpl (set by the server).
        self.network: NetworkService | None = None
        host.on_lifecycle(self._on_lifecycle, _WATCHED)

    # --- start and stop -------------------------------------------------------

    def recover(self) -> int:
        """Adopt running VMs; until this returns, verbs answer `recovery`."""
        try:
            return recovery.recover(self.ctx)
        finally:
            self._recovering = False

    def close(self) -> None:
        """Finish event follow-ups in flight, then let go of libvirt."""
        self._closed.set()
        self._events.shutdown(wait=True)
        self.ctx.host.close()

    def check_ready(self) -> None:
        """Raise the VDSM error a VM verb gets while the agent cannot serve it."""
        if self._recovering:
            raise VdsmError(Code.RECOVERY, "the agent is recovering its VMs; retry shortly")

    # --- verbs ----------------------------------------------------------------

    def create(self, params: Any) -> dict[str, Any]:
        return lifecycle.create(self.ctx, params)

    def destroy(self, vm_id: Any) -> dict[str, Any]:
        return lifecycle.destroy(self.ctx, vm_id)

    def pause(self, vm_id: Any) -> dict[str, Any]:
        return lifecycle.pause(self.ctx, vm_id)

    def cont(self, vm_id: Any) -> dict[str, Any]:
        return lifecycle.cont(self.ctx, vm_id)

    def list_vms(self, full: Any = False, vm_list: Any = None) -> list[dict[str, Any]]:
        if vm_list is not None and not isinstance(vm_list, list | tuple):
            raise VdsmError(Code.GENERAL, f"vmList: expected a list of vmIds, got {vm_list!r}")
        wanted = set(vm_list or ())
        vms = [v for v in self.ctx.registry.all() if not wanted or v.vm_id in wanted]
        return [v.full() if full else v.summary() for v in vms]

    def get_vm_stats(self, vm_id: Any) -> list[dict[str, Any]]:
        return reports.get_vm_stats(self.ctx, vm_id)

    def get_all_vm_stats(self) -> list[dict[str, Any]]:
        return reports.get_all_vm_stats(self.ctx)

    def get_vds_capabilities(self) -> dict[str, Any]:
        extra = self.network.capabilities if self.network is not None else None
        return reports.get_vds_capabilities(self.ctx, self.cluster_version, extra)

    def get_vds_stats(self) -> dict[str, Any]:
        return reports.get_vds_stats(self.ctx, self.started_at)

    def setup_networks(self, networks: Any, bondings: Any = None,
                       options: Any = None) -> None:
        self._network("setupNetworks").setup(networks, bondings, options)

    def set_safe_network_config(self) -> None:
        self._network("setSafeNetworkConfig").set_safe()

    def touch(self) -> None:
        """A client call arrived (a pending connectivity check waits for one)."""
        if self.network is not None:
            self.network.touch()

    def confirm_connectivity(self) -> None:
        """VDSM's explicit "I can still reach you" for a pending connectivity check."""
        self.touch()

    def _network(self, verb: str) -> NetworkService:
        if self.network is None:
            raise VdsmError(Code.NOIMPL, f"{verb}: host networking is not enabled")
        return self.network

    def get_custom_property_definitions(self) -> dict[str, Any]:
        return dict(self.ctx.props.definitions())

    def get_hook_runs(self, filters: Any = None) -> list[dict[str, Any]]:
        filters = filters or {}
        if not isinstance(filters, dict):
            raise VdsmError(Code.GENERAL, f"filter: expected a struct, got {filters!r}")
        known = {"vmId", "event", "failed", "chainId", "limit"}
        unknown = sorted(set(filters) - known)
        if unknown:
            raise VdsmError(Code.GENERAL, f"filter: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        limit = filters.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise VdsmError(Code.GENERAL, f"filter.limit: expected a positive integer, "
                            f"got {limit!r}")
        if self.records is None:
            return []
        runs = self.records.query(vm_id=filters.get("vmId"), event=filters.get("event"),
                                  failed=bool(filters.get("failed", False)),
                                  chain_id=filters.get("chainId"), limit=limit)
        return [r.to_dict() for r in runs]

    # --- libvirt events -------------------------------------------------------

    def _on_lifecycle(self, vm_id: str, event: int, detail: int) -> None:
        """On libvirt's event thread: only decide whether to look closer."""
        if event not in _WATCHED:
            return
        vm = self.ctx.registry.find(vm_id)
        if vm is None or vm.stopping or self._closed.is_set():
            return
        with contextlib.suppress(RuntimeError):  # shutting down
            self._events.submit(self._follow_up, vm, event, detail)

    def _follow_up(self, vm: Vm, event: int, detail: int) -> None:
        with vm.lock:
            if vm.removed or vm.stopping or vm.status == DOWN:
                return
            # The event may be stale (a later create reused the vmId): ask libvirt.
            try:
                state, reason = self.ctx.host.state(vm.vm_id)
            except HostError as e:
                if not e.no_domain:
                    log.warning("VM %s: state unknown after event: %s", vm.vm_id, e)
                    return
                self._died(vm, event, detail)
                return
            status = status_from_libvirt(state, reason)
            if status == DOWN:
                self._died(vm, event, detail)
            elif vm.status in (UP, PAUSED) and status != vm.status:
                log.info("VM %s: %s -> %s (outside the agent)", vm.vm_id, vm.status, status)
                vm.status = status

    def _died(self, vm: Vm, event: int, detail: int) -> None:
        """The VM stopped without the agent: Down, after_ destroy hooks once, kept listed."""
        reason, abnormal = stop_reason(event, detail)
        vm.status = DOWN
        vm.exit_code = 1 if abnormal else 0
        vm.exit_message = reason
        log.warning("VM %s (%s) is Down: %s", vm.vm_id, vm.name, reason)
        lifecycle.after_destroy(self.ctx, vm, vm.xml)
