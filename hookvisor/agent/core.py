"""The Agent: VDSM's verbs as plain methods that return payloads and raise VdsmError.

It also listens to libvirt's lifecycle events: a VM that stops outside the
agent (crash, `virsh destroy`, guest power-off) turns `Down`, gets its
after_ destroy hooks once, and stays listed until a client calls `destroy`
(VDSM's behaviour: the engine collects the exit reason, then destroys).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hookvisor.agent import (
    devices_extra,
    hibernation,
    hostdev,
    hotplug,
    lifecycle,
    recovery,
    reports,
)
from hookvisor.agent.context import Context, PropertyChecker
from hookvisor.agent.hookcalls import HookCalls
from hookvisor.agent.migration import Migrations
from hookvisor.agent.network import NetworkService
from hookvisor.agent.params import show
from hookvisor.agent.registry import VmRegistry
from hookvisor.agent.vm import DOWN, PAUSED, STOPS_DOMAIN, UP, Vm, status_from_libvirt
from hookvisor.config import Settings
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.catalogue import EVENTS
from hookvisor.hooks.records import RunRecords
from hookvisor.virt.host import (
    EVENT_RESUMED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    STOPPED_NOT_DEATH,
    Host,
    HostError,
    stop_reason,
)

log = logging.getLogger("hookvisor.agent")

# Seconds between looks at a VM a long operation holds (see Agent._when_free).
_BUSY_RETRY = 0.2

# The lifecycle events that may change a VM's status.
_WATCHED = (EVENT_STOPPED, EVENT_SUSPENDED, EVENT_RESUMED)

_HOOK_RUN_FILTERS = ("vmId", "event", "failed", "chainId", "limit", "before")
_MAX_FILTER_TEXT = 128  # a vmId or chain id is a UUID; room to spare, no more
_DEFAULT_PAGE = 100
_TEXT_FIELDS = ("stdout", "stderr", "diff", "raw_diff")
# Characters a transport must escape, counted at their longest escaped form.
_GROWS = re.compile(r"[&<>\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELD_COST = 64  # a struct member's markup (<member><name>..</name><value>..)


def vm_id_arg(value: Any, where: str = "vmId") -> str:
    """A vmId a client passed, canonical; `general` naming `where` if it is not a UUID."""
    if isinstance(value, str) and len(value) <= 64:
        with contextlib.suppress(ValueError):
            return str(uuid.UUID(value))
    raise VdsmError(Code.GENERAL, f"{where}: expected a VM UUID, got {show(value)}")


def bool_arg(value: Any, where: str) -> bool:
    """A boolean parameter: a boolean, or the string "true" or "false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise VdsmError(Code.GENERAL, f"{where}: expected true or false, got {show(value)}")


def _int_arg(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VdsmError(Code.GENERAL, f"{where}: expected an integer from {low} to {high}, "
                        f"got {show(value)}")
    return value


def _text_arg(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_FILTER_TEXT:
        raise VdsmError(Code.GENERAL, f"{where}: expected a string of 1 to "
                        f"{_MAX_FILTER_TEXT} characters, got {show(value)}")
    return value


def reply_size(run: dict[str, Any]) -> int:
    """An upper bound of a run's size in a reply: UTF-8, markup, escapes at their longest."""
    size = 0
    for key, value in run.items():
        size += _FIELD_COST + len(key)
        if isinstance(value, str):
            size += len(value.encode("utf-8", "surrogatepass"))
            size += 6 * _GROWS.subn("", value)[1]
        else:
            size += 32
    return size


def _cut_to_fit(run: dict[str, Any], budget: int) -> dict[str, Any]:
    """A run too large for a reply on its own, its outputs cut (and marked) to fit."""
    fixed = reply_size({k: v for k, v in run.items() if k not in _TEXT_FIELDS})
    # Each long text gets an equal share; escapes may take 7 bytes a character.
    share = max(0, (budget - fixed - 256) // (7 * len(_TEXT_FIELDS)))
    out = dict(run)
    for key in _TEXT_FIELDS:
        text = out.get(key)
        if isinstance(text, str) and len(text) > share:
            out[key] = text[:share]
            if key in ("diff", "raw_diff"):
                out[key] += "\n[cut to fit the reply]"
            else:
                out[f"{key}_truncated"] = True
    return out


class HookRunsPage(list[dict[str, Any]]):
    """One page of getHookRuns, newest first; `reply_extra` travels next to it in the reply.

    `next` is the cursor of the following page (pass it as the filter's `before`),
    absent on the last page.
    """

    def __init__(self, runs: list[dict[str, Any]], next_cursor: int | None) -> None:
        super().__init__(runs)
        self.next = next_cursor
        self.reply_extra: dict[str, Any] = {} if next_cursor is None else {"next": next_cursor}


class Agent:
    def __init__(
        self,
        host: Host,
        hooks: HookCalls,
        props: PropertyChecker,
        run_dir: Path,
        cluster_version: str,
        records: RunRecords | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.ctx = Context(host, VmRegistry(), hooks, props, run_dir, self.settings)
        self.cluster_version = cluster_version
        self.records = records
        self.started_at = time.time()
        self._recovering = True
        # Event follow-ups run hooks and take VM locks: never on libvirt's event thread.
        self._events = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vm-events")
        self._closed = threading.Event()
        # Set while libvirt is lost and until the VMs are reconciled after it is back.
        self._stale = threading.Event()
        # Host networking; None: setupNetworks answers noimpl (set by the server).
        self.network: NetworkService | None = None
        # Work on a VM whose lock a long operation holds, to run once it is free.
        self._later: dict[tuple[str, str], Callable[[], None]] = {}
        self._later_lock = threading.Lock()
        host.on_lifecycle(self._on_lifecycle, _WATCHED)
        host.on_device_removed(self.ctx.removals.removed)
        host.on_connection(self._on_connection)
        # Live migration (agent/migration.py); the server gives it a way to reach peers.
        self.migrations = Migrations(self.ctx)

    # --- start and stop -------------------------------------------------------

    def recover(self) -> int:
        """Adopt running VMs; until this returns, verbs answer `recovery`."""
        try:
            adopted = recovery.recover(self.ctx)
            self.migrations.adopt()  # migrations libvirt still runs: followed to their end
            return adopted
        finally:
            self._recovering = False

    def close(self) -> None:
        """Finish event follow-ups in flight, then let go of libvirt."""
        self._closed.set()
        self.migrations.close()
        self._events.shutdown(wait=True)
        self.ctx.host.close()

    def check_ready(self) -> None:
        """Raise the VDSM error a VM verb gets while the agent cannot serve it."""
        if self._recovering:
            raise VdsmError(Code.RECOVERY, "the agent is recovering its VMs; retry shortly")
        if not self.ctx.host.connected:
            why = self.ctx.host.unavailable()
            if why:
                raise VdsmError(Code.UNAVAIL, why)
        if self._stale.is_set():
            raise VdsmError(Code.UNAVAIL, f"libvirt connection to {self.ctx.host.uri} "
                            "restored; reconciling the VMs with libvirt, retry shortly")

    # --- verbs ----------------------------------------------------------------

    def create(self, params: Any) -> dict[str, Any]:
        if isinstance(params, dict) and params.get("restoreState") is not None:
            return hibernation.restore(self.ctx, params)  # dehibernate
        return lifecycle.create(self.ctx, params)

    def hibernate(self, vm_id: Any, hiber_vol_handle: Any = None) -> dict[str, Any]:
        return hibernation.hibernate(self.ctx, vm_id, hiber_vol_handle)

    def destroy(self, vm_id: Any) -> dict[str, Any]:
        return lifecycle.destroy(self.ctx, vm_id_arg(vm_id))

    def pause(self, vm_id: Any) -> dict[str, Any]:
        return lifecycle.pause(self.ctx, vm_id_arg(vm_id))

    def cont(self, vm_id: Any) -> dict[str, Any]:
        return lifecycle.cont(self.ctx, vm_id_arg(vm_id))

    def hotplug_nic(self, params: Any) -> dict[str, Any]:
        return hotplug.hotplug(self.ctx, params, hotplug.NIC)

    def hotunplug_nic(self, params: Any) -> dict[str, Any]:
        return hotplug.hotunplug(self.ctx, params, hotplug.NIC)

    def hotplug_disk(self, params: Any) -> dict[str, Any]:
        return hotplug.hotplug(self.ctx, params, hotplug.DISK)

    def hotunplug_disk(self, params: Any) -> dict[str, Any]:
        return hotplug.hotunplug(self.ctx, params, hotplug.DISK)

    def vm_update_device(self, vm_id: Any, params: Any = None) -> dict[str, Any]:
        return hotplug.update_device(self.ctx, vm_id, params)

    def hotplug_memory(self, params: Any) -> dict[str, Any]:
        return devices_extra.hotplug_memory(self.ctx, params)

    def set_number_of_cpus(self, vm_id: Any, number_of_cpus: Any = None) -> dict[str, Any]:
        return devices_extra.set_number_of_cpus(self.ctx, vm_id, number_of_cpus)

    def set_ticket(self, vm_id: Any, password: Any = None, ttl: Any = 0,
                   existing_conn_action: Any = "disconnect", params: Any = None) -> None:
        devices_extra.set_ticket(self.ctx, vm_id, password, ttl, existing_conn_action, params)

    def hostdev_list_by_caps(self, caps: Any = None) -> dict[str, Any]:
        return hostdev.list_by_caps(self.ctx, caps)

    def migrate(self, params: Any) -> dict[str, Any]:
        return self.migrations.migrate(params)

    def migration_create(self, params: Any, incoming_limit: Any = None) -> dict[str, Any]:
        return self.migrations.create(params, incoming_limit)

    def migrate_status(self, vm_id: Any) -> dict[str, Any]:
        return self.migrations.status(vm_id_arg(vm_id))

    def migrate_cancel(self, vm_id: Any) -> dict[str, Any]:
        self.migrations.cancel(vm_id_arg(vm_id))
        return {}

    def list_vms(self, full: Any = False, vm_list: Any = None) -> list[dict[str, Any]]:
        full = bool_arg(full, "fullStatus")
        wanted: set[str] = set()
        if vm_list is not None:
            if not isinstance(vm_list, list | tuple):
                raise VdsmError(Code.GENERAL, f"vmList: expected a list of vmIds, "
                                f"got {show(vm_list)}")
            wanted = {vm_id_arg(v, f"vmList[{i}]") for i, v in enumerate(vm_list)}
        vms = [v for v in self.ctx.registry.all() if not wanted or v.vm_id in wanted]
        return [v.full() if full else v.summary() for v in vms]

    def dumpxmls(self, vm_list: Any) -> dict[str, str]:
        """VDSM's Host.dumpxmls: {vmId: the domain XML libvirt has now} (what the
        hooks made of it, as the VM really got it)."""
        if not isinstance(vm_list, list | tuple):
            raise VdsmError(Code.GENERAL, f"vmList: expected a list of vmIds, got {show(vm_list)}")
        ids = [vm_id_arg(v, f"vmList[{i}]") for i, v in enumerate(vm_list)]
        out: dict[str, str] = {}
        for vm_id in ids:
            self.ctx.registry.get(vm_id)  # noVM for one this agent does not run
            try:
                out[vm_id] = self.ctx.host.xml(vm_id)
            except HostError as e:
                code = Code.NO_VM if e.no_domain else Code.GENERAL
                raise VdsmError(code, f"{vm_id}: {e}") from None
        return out

    def get_vm_stats(self, vm_id: Any) -> list[dict[str, Any]]:
        return reports.get_vm_stats(self.ctx, vm_id_arg(vm_id))

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

    def get_hook_runs(self, filters: Any = None) -> HookRunsPage:
        """Runs newest first, one page: at most `limit` (<= hook_runs_page) runs and
        hook_runs_reply_bytes; `next` on the page is the `before` of the next page."""
        query, limit = self._hook_run_filters(filters)
        if self.records is None:
            return HookRunsPage([], None)
        budget = self.settings.hook_runs_reply_bytes
        runs: list[dict[str, Any]] = []
        used = 0
        more = False
        # Read a few rows at a time: what the budget leaves out is never held.
        for record in self.records.iter_query(**query):
            if len(runs) == limit:
                more = True
                break
            run = record.to_dict()
            size = reply_size(run)
            if size > budget:
                run = _cut_to_fit(run, budget)
                size = reply_size(run)
            if used + size > budget:
                more = True
                break
            runs.append(run)
            used += size
        return HookRunsPage(runs, runs[-1]["id"] if more and runs else None)

    def _hook_run_filters(self, filters: Any) -> tuple[dict[str, Any], int]:
        if filters is None:
            filters = {}
        if not isinstance(filters, dict):
            raise VdsmError(Code.GENERAL, f"filter: expected a struct, got {show(filters)}")
        unknown = sorted(str(k) for k in filters if k not in _HOOK_RUN_FILTERS)
        if unknown:
            raise VdsmError(Code.GENERAL, f"filter: unknown key(s) "
                            f"{', '.join(show(k) for k in unknown[:5])}; "
                            f"known: {', '.join(_HOOK_RUN_FILTERS)}")
        page = self.settings.hook_runs_page
        query: dict[str, Any] = {}
        if filters.get("vmId") is not None:
            query["vm_id"] = _text_arg(filters["vmId"], "filter.vmId")
        if filters.get("event") is not None:
            event = _text_arg(filters["event"], "filter.event")
            if event not in EVENTS:
                raise VdsmError(Code.GENERAL, f"filter.event: {show(event)} is not a hook "
                                "event (see docs/hooks.md)")
            query["event"] = event
        if filters.get("chainId") is not None:
            query["chain_id"] = _text_arg(filters["chainId"], "filter.chainId")
        if filters.get("failed") is not None:
            query["failed"] = bool_arg(filters["failed"], "filter.failed")
        if filters.get("before") is not None:
            query["before"] = _int_arg(filters["before"], "filter.before", 1, 2**63 - 1)
        limit = min(_DEFAULT_PAGE, page)
        if filters.get("limit") is not None:
            limit = _int_arg(filters["limit"], "filter.limit", 1, page)
        return query, limit

    # --- libvirt events -------------------------------------------------------

    def _on_lifecycle(self, vm_id: str, event: int, detail: int) -> None:
        """On libvirt's event thread: only decide whether to look closer."""
        self.migrations.wake(vm_id)  # a migration waiting for this domain looks now
        if event not in _WATCHED:
            return
        if event == EVENT_STOPPED:
            self.ctx.removals.wake(vm_id)  # an unplug waiting on this guest: it is gone
        vm = self.ctx.registry.find(vm_id)
        # Down already (the agent's own destroy set it, before it lets go of the
        # VM's lock): _check would do nothing, and a follow-up now would find the
        # lock held and start a retry timer, one thread per destroy. A record never
        # comes back from Down, so this read without the lock cannot miss a death.
        if (vm is None or vm.status == DOWN or vm.operation in STOPS_DOMAIN
                or self._closed.is_set()):
            return
        with contextlib.suppress(RuntimeError):  # shutting down
            self._events.submit(self._follow_up, vm, event, detail)

    def _follow_up(self, vm: Vm, event: int, detail: int) -> None:
        self._when_free(vm, "event", lambda: self._check(vm, event, detail))

    def _when_free(self, vm: Vm, kind: str, work: Callable[[], None]) -> None:
        """Run `work` under vm.lock, on an event worker, without waiting for the lock.

        A long operation may hold the VM (a hot-unplug waiting for its guest, a
        save writing memory); the few event workers serve every VM, so instead of
        blocking one, look again a little later. Of repeated work of one `kind`
        for one VM, only the latest is kept while it waits.
        """
        if not vm.lock.acquire(blocking=False):
            key = (vm.vm_id, kind)
            with self._later_lock:
                waiting = key in self._later
                self._later[key] = work
            if not waiting and not self._closed.is_set():
                timer = threading.Timer(_BUSY_RETRY, self._retry, (vm, kind))
                timer.daemon = True
                timer.start()
            return
        try:
            if not vm.removed:
                work()
        finally:
            vm.lock.release()

    def _retry(self, vm: Vm, kind: str) -> None:
        with self._later_lock:
            work = self._later.pop((vm.vm_id, kind), None)
        if work is None or vm.removed or self._closed.is_set():
            return
        with contextlib.suppress(RuntimeError):  # shutting down
            self._events.submit(self._when_free, vm, kind, work)

    def _check(self, vm: Vm, event: int, detail: int) -> None:
        """Under vm.lock: what libvirt says now decides, not the (maybe stale) event."""
        if vm.operation in STOPS_DOMAIN or vm.status == DOWN:
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
            vm.set_status(status)

    def _on_connection(self, connected: bool) -> None:
        """On libvirt's event thread or the reconnect thread: only flag and hand over."""
        if not connected:
            self._stale.set()
            return
        if self._closed.is_set():
            return
        with contextlib.suppress(RuntimeError):  # shutting down
            self._events.submit(self._reconcile)

    def _reconcile(self) -> None:
        """libvirt is back: match the VMs with what it runs now, then lift the gate."""
        try:
            died, adopted = recovery.reconcile(
                self.ctx, self._gone, lambda vm, work: self._when_free(vm, "reconcile", work))
        except HostError as e:
            # Lost again: the next reconnect reconciles; the gate stays.
            log.warning("reconcile after reconnect failed: %s", e)
            return
        if self.ctx.host.connected:
            self._stale.clear()
            log.info("reconciled with libvirt: %d VM(s) died meanwhile, %d adopted",
                     died, adopted)

    def _gone(self, vm: Vm) -> None:
        """Under vm.lock: the domain vanished while the agent could not watch it."""
        self._down(vm, "stopped while the libvirt connection was lost (reason unknown)", True)

    def _died(self, vm: Vm, event: int, detail: int) -> None:
        """The VM stopped without the agent: Down, after_ destroy hooks once, kept listed."""
        reason, abnormal = stop_reason(event, detail)
        # Saved or migrated away (by someone else): the VM lives on elsewhere.
        death = not (event == EVENT_STOPPED and detail in STOPPED_NOT_DEATH)
        self._down(vm, reason, abnormal, death)

    def _down(self, vm: Vm, reason: str, abnormal: bool, death: bool = True) -> None:
        vm.exit_code = 1 if abnormal else 0
        vm.exit_message = reason
        vm.set_status(DOWN)
        log.warning("VM %s (%s) is Down: %s", vm.vm_id, vm.name, reason)
        if death:
            lifecycle.after_destroy(self.ctx, vm, vm.xml)
