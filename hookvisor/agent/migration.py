"""Live migration, agent to agent (SPEC §4 `migrate`, `migrationCreate`, `migrateStatus`).

Source (`migrate`): the source's before_ hooks run before the verb returns
(before_device_migrate_source per device with custom properties, then
before_vm_migrate_source), so a veto answers `migrate` itself with hookError
and the VM never leaves Up. VDSM runs them in its migration thread and reports
a veto through the migration status; the outcome is the same, the client only
learns it sooner (and migrateStatus says it too). The rest runs on a thread:
the destination agent's `migrationCreate` (mutual TLS with the host's
certificate), then libvirt's live peer-to-peer migration to the libvirt URI
the destination answered with. On success the after_ hooks run (VM, then
devices, VDSM's order) and the source forgets the VM: no destroy hooks, the
guest lives on. On any failure after the handshake the guest stays here (libvirt
resumes it), the destination is told to drop its half-created VM (`destroy`),
and migrateStatus says why.

Destination (`migrationCreate`): the source's domain XML is held to the client
policy (a peer presents a host certificate of the same CA: it is as trusted as
an API client, VDSM's model), the custom properties to this host's own
definitions, then before_device_migrate_destination and
before_vm_migrate_destination run (either vetoes). The VM is listed as
`Migration Destination` until libvirt's incoming domain runs (after_ hooks,
Up) or fails, is aborted, or does not come within migration_timeout (forgotten,
its domain destroyed if any).

The agent reaches a peer through `Migrations.connect`, set by the server
(hookvisor.rpc.peer): the agent layer never imports the RPC layer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hookvisor.agent.context import Context
from hookvisor.agent.hookcalls import family
from hookvisor.agent.lifecycle import client_policy, custom_devices
from hookvisor.agent.params import parse_create, show
from hookvisor.agent.policy import check_domain, check_sizes
from hookvisor.agent.vm import (
    DOWN,
    MIGRATING,
    MIGRATION_DESTINATION,
    MIGRATION_SOURCE,
    UP,
    Vm,
    status_from_libvirt,
)
from hookvisor.errors import Code, VdsmError
from hookvisor.props.errors import PropertyError
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import (
    JOB_MIGRATION_IN,
    JOB_MIGRATION_OUT,
    JOB_NONE,
    RUNNING,
    HostError,
)

log = logging.getLogger("hookvisor.migration")

VM_MIGRATE_SOURCE = family("vm_migrate_source")
DEVICE_MIGRATE_SOURCE = family("device_migrate_source")
VM_MIGRATE_DESTINATION = family("vm_migrate_destination")
DEVICE_MIGRATE_DESTINATION = family("device_migrate_destination")

# Outcomes (migrateStatus "state").
STARTING = "starting"  # source hooks done, handshake with the destination
RUNNING_STATE = "running"  # libvirt is moving the guest
INCOMING = "incoming"  # destination: waiting for libvirt's incoming domain
DONE = "done"
FAILED = "failed"
CANCELED = "canceled"
VETOED = "vetoed"
_ACTIVE = frozenset({STARTING, RUNNING_STATE, INCOMING})

# How often the source makes sure the destination agent is still there.
_PING = 0.5
# How often a waiter looks again without an event to wake it.
_TICK = 0.1
# Outcomes kept for migrateStatus after the VM left (bounded: one per VM id).
_KEEP = 256
_PEER_TIMEOUT = 60.0
_PING_TIMEOUT = 5.0


class PeerError(Exception):
    """A call to another agent failed: its error (`code`, VDSM's) or no answer (None)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Peer(Protocol):
    """One connection to another agent's API (hookvisor.rpc.peer makes them)."""

    def call(self, verb: str, *params: Any) -> dict[str, Any]: ...

    def close(self) -> None: ...


# (HOST:PORT of the peer agent, timeout in seconds) -> a connection.
Connect = Callable[[str, float], Peer]


@dataclass
class Record:
    """One migration as migrateStatus reports it."""

    vm_id: str
    role: str  # "source" | "destination"
    peer: str  # the other agent (source: the destination's HOST:PORT)
    state: str = STARTING
    message: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    # libvirt's last job statistics (the completed job's once it is over).
    stats: dict[str, Any] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    # Set by libvirt events and cancel: a waiter looks at once, not at its next tick.
    wake: threading.Event = field(default_factory=threading.Event, repr=False)

    def end(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        self.ended_at = time.time()
        self.wake.set()

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vmId": self.vm_id, "role": self.role, "peer": self.peer,
                               "state": self.state, "message": self.message,
                               "startedAt": self.started_at}
        ended = self.ended_at if self.ended_at is not None else time.time()
        out["elapsed"] = round(ended - self.started_at, 3)
        out.update(progress_of(self.stats, self.state))
        return out


def progress_of(stats: dict[str, Any], state: str) -> dict[str, Any]:
    """VDSM-like progress figures from libvirt's job statistics."""
    total = int(stats.get("data_total", 0) or 0)
    remaining = int(stats.get("data_remaining", 0) or 0)
    processed = int(stats.get("data_processed", 0) or 0)
    if state == DONE:
        percent = 100
    elif total > 0:
        percent = min(99, max(0, int(100 * (total - remaining) / total)))
    else:
        percent = 0
    out: dict[str, Any] = {"progress": percent, "dataTotal": total,
                           "dataProcessed": processed, "dataRemaining": remaining}
    for key, name in (("downtime", "downtime"), ("time_elapsed", "timeElapsed"),
                      ("memory_bps", "memoryBps"), ("memory_dirty_rate", "dirtyRate")):
        if key in stats:
            out[name] = int(stats[key])
    return out


def _vm_id(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 64:
        with contextlib.suppress(ValueError):
            return str(uuid.UUID(value))
    raise VdsmError(Code.GENERAL, f"vmId: expected a VM UUID, got {show(value)}")


def _hostport(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 300 or "/" in value:
        raise VdsmError(Code.GENERAL, f"dst: expected the destination agent's HOST:PORT, "
                        f"got {show(value)}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise VdsmError(Code.GENERAL, f"dst: expected HOST:PORT, got {show(value)}")
    return value


def _bool(value: Any, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    raise VdsmError(Code.GENERAL, f"{where}: expected true or false, got {show(value)}")


def _bandwidth(value: Any) -> int:
    """maxBandwidth, MiB/s (VDSM's unit); 0: libvirt's default."""
    if value in (None, "", 0):
        return 0
    if isinstance(value, str) and value.isdigit() and len(value) < 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise VdsmError(Code.GENERAL, f"maxBandwidth: expected MiB/s, a positive integer, "
                        f"got {show(value)}")
    return value


@dataclass(frozen=True)
class Request:
    vm_id: str
    dst: str
    tunnelled: bool
    bandwidth: int
    dstparams: dict[str, Any]
    # Where QEMU's stream goes instead of what the destination says (VDSM's dstqemu).
    dstqemu: str | None


def parse_migrate(params: Any) -> Request:
    if not isinstance(params, dict):
        raise VdsmError(Code.GENERAL, f"params: expected a struct, got {show(params)}")
    vm_id = _vm_id(params.get("vmId"))
    method = params.get("method", "online")
    if method != "online":
        raise VdsmError(Code.GENERAL, f"method: only 'online' (live) migration is supported, "
                        f"got {show(method)}")
    dstparams = params.get("dstparams") or {}
    if not isinstance(dstparams, dict):
        raise VdsmError(Code.GENERAL, f"dstparams: expected a struct, got {show(dstparams)}")
    dstqemu = params.get("dstqemu")
    if dstqemu is not None and (not isinstance(dstqemu, str) or not dstqemu
                                or len(dstqemu) > 255 or "/" in dstqemu):
        raise VdsmError(Code.GENERAL, f"dstqemu: expected an address, got {show(dstqemu)}")
    return Request(vm_id, _hostport(params.get("dst")), _bool(params.get("tunneled"),
                   "tunneled"), _bandwidth(params.get("maxBandwidth")), dict(dstparams),
                   dstqemu or None)


class Created(dict[str, Any]):
    """migrationCreate's payload (the VM as listed); `reply_extra` says where libvirt
    migrates to."""

    def __init__(self, vm: dict[str, Any], extra: dict[str, Any]) -> None:
        super().__init__(vm)
        self.reply_extra = extra


class Migrations:
    """The migrations of one agent: its outgoing and incoming VMs and their outcomes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.connect: Connect | None = None
        self._lock = threading.Lock()
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._closed = threading.Event()
        # Lifecycle events reach wake() through the agent's one subscription (libvirt
        # refuses a second lifecycle callback on one connection).
        ctx.host.on_job_completed(self._on_job_completed)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for rec in self._records.values():
                rec.wake.set()

    # --- records -----------------------------------------------------------------

    def _record(self, rec: Record) -> None:
        with self._lock:
            self._records.pop(rec.vm_id, None)
            self._records[rec.vm_id] = rec
            while len(self._records) > _KEEP:
                self._records.popitem(last=False)

    def _active(self, vm_id: str) -> Record | None:
        with self._lock:
            rec = self._records.get(vm_id)
        return rec if rec is not None and rec.state in _ACTIVE else None

    def wake(self, vm_id: str) -> None:
        """A lifecycle event of `vm_id`: a migration waiting on it looks at once."""
        with self._lock:
            rec = self._records.get(vm_id)
        if rec is not None:
            rec.wake.set()

    def _on_job_completed(self, vm_id: str, stats: dict[str, Any]) -> None:
        with self._lock:
            rec = self._records.get(vm_id)
        if rec is not None and rec.role == "source":
            rec.stats = stats  # downtime and totals: the domain itself is gone by now

    # --- migrateStatus, migrateCancel ----------------------------------------------

    def status(self, vm_id: str) -> dict[str, Any]:
        with self._lock:
            rec = self._records.get(vm_id)
        if rec is None:
            vm = self.ctx.registry.get(vm_id)  # noVM if it is not known either
            return {"vmId": vm.vm_id, "state": "none", "progress": 0,
                    "message": "no migration of this VM since the agent started"}
        if rec.state == RUNNING_STATE and rec.role == "source":
            with contextlib.suppress(HostError):
                stats = self.ctx.host.job_stats(vm_id)
                if stats.get("type", JOB_NONE) != JOB_NONE:
                    rec.stats = stats
        return rec.view()

    def cancel(self, vm_id: str) -> None:
        rec = self._active(vm_id)
        if rec is None or rec.role != "source":
            self.ctx.registry.get(vm_id)
            raise VdsmError(Code.GENERAL, f"VM {vm_id}: no outgoing migration in progress")
        rec.cancel.set()
        rec.wake.set()
        if rec.state == RUNNING_STATE:
            with contextlib.suppress(HostError):  # between jobs: the thread sees `cancel`
                self.ctx.host.abort_job(vm_id)

    # --- source ------------------------------------------------------------------

    def migrate(self, params: Any) -> dict[str, Any]:
        req = parse_migrate(params)
        vm = self.ctx.registry.get(req.vm_id)
        if self.connect is None:
            raise VdsmError(Code.NOIMPL, "migrate: this agent has no way to call another "
                            "agent (served agents have one)")
        if self._active(vm.vm_id) is not None:
            raise VdsmError(Code.MIG_IN_PROGRESS, f"VM {vm.vm_id}: a migration is already "
                            "in progress")
        rec = Record(vm.vm_id, "source", req.dst)
        with vm.lock:
            if vm.removed:
                raise VdsmError(Code.NO_VM, f"no VM with vmId {vm.vm_id!r}")
            if vm.status != UP or vm.operation is not None:
                raise VdsmError(Code.MIGRATE_ERR, f"VM {vm.vm_id} is {vm.status}"
                                f"{' (' + vm.operation + ')' if vm.operation else ''}: "
                                "only an Up VM migrates")
            if self._active(vm.vm_id) is not None:
                raise VdsmError(Code.MIG_IN_PROGRESS, f"VM {vm.vm_id}: a migration is "
                                "already in progress")
            try:
                self._before_source(vm)
            except VdsmError as e:
                rec.end(VETOED, e.message)
                self._record(rec)
                raise
            self._record(rec)
        threading.Thread(target=self._source, args=(vm, rec, req),
                         name=f"migrate-{vm.vm_id[:8]}", daemon=True).start()
        return {}

    def _before_source(self, vm: Vm) -> None:
        hooks = self.ctx.hooks
        if not (hooks.wanted(VM_MIGRATE_SOURCE.before) or vm.device_props):
            return  # no script to read the XML: spare libvirt the call
        try:
            xml = self.ctx.host.xml(vm.vm_id)
        except HostError as e:
            raise VdsmError(Code.UNAVAIL if e.disconnected else Code.MIGRATE_ERR,
                            f"VM {vm.vm_id}: no live XML: {e}") from None
        vm.xml = xml
        for ref, props in custom_devices(vm, xml):
            hooks.run(DEVICE_MIGRATE_SOURCE.before, ref.xml, vm, props)
        hooks.run(VM_MIGRATE_SOURCE.before, xml, vm)

    def _source(self, vm: Vm, rec: Record, req: Request) -> None:
        with vm.lock:
            if vm.removed:
                rec.end(FAILED, "the VM was destroyed before the migration started")
                return
            with vm.doing(MIGRATING):
                vm.set_status(MIGRATION_SOURCE)
                try:
                    ok = self._run_source(vm, rec, req)
                except Exception as e:  # never leave a VM "Migration Source"
                    log.exception("VM %s: migration failed unexpectedly", vm.vm_id)
                    rec.end(FAILED, f"unexpected error: {type(e).__name__}: {e}")
                    ok = False
                if not ok:
                    vm.set_status(self._status_now(vm))
            if ok:
                self._after_source(vm)

    def _status_now(self, vm: Vm) -> str:
        try:
            return status_from_libvirt(*self.ctx.host.state(vm.vm_id))
        except HostError as e:
            return DOWN if e.no_domain else UP

    def _create_params(self, vm: Vm, req: Request) -> dict[str, Any]:
        xml = self.ctx.host.migratable_xml(vm.vm_id)
        params = {k: v for k, v in vm.params.items() if k != "devices"}
        params.update(req.dstparams)
        params.update({"vmId": vm.vm_id, "vmName": vm.name, "_srcDomXML": xml,
                       "custom": dict(vm.vm_props), "startedAt": vm.started_at})
        return params

    def _run_source(self, vm: Vm, rec: Record, req: Request) -> bool:
        """Handshake, libvirt migration, watch; True when the guest is on the destination."""
        assert self.connect is not None
        if rec.cancel.is_set():
            rec.end(CANCELED, "canceled before the destination was asked")
            return False
        try:
            params = self._create_params(vm, req)
        except HostError as e:
            rec.end(FAILED, f"no migratable XML of the VM: {e}")
            return False
        try:
            # Its hooks may take long (hook_timeout each): as long as a migration may.
            peer = self.connect(req.dst, max(_PEER_TIMEOUT,
                                             self.ctx.settings.migration_timeout))
            reply = peer.call("migrationCreate", params)
        except PeerError as e:
            if e.code is None:  # no answer: it may have created it all the same
                self._abort_destination(vm, req)
            rec.end(FAILED, f"destination {req.dst} refused the VM: {e}")
            return False
        with contextlib.suppress(PeerError, OSError):
            peer.close()
        try:
            # Pings need a quick answer: a connection of their own, a short timeout.
            peer = self.connect(req.dst, _PING_TIMEOUT)
        except PeerError as e:
            self._abort_destination(vm, req)
            rec.end(FAILED, f"destination agent {req.dst} gone after the handshake: {e}")
            return False
        try:
            dest_uri, data_uri = self._where(reply, req)
        except ValueError as e:
            self._abort_destination(vm, req)
            rec.end(FAILED, f"destination {req.dst}: {e}")
            return False
        if rec.cancel.is_set():
            self._abort_destination(vm, req)
            rec.end(CANCELED, "canceled during the handshake")
            return False
        rec.state = RUNNING_STATE
        log.info("VM %s: migrating to %s (libvirt %s)", vm.vm_id, req.dst, dest_uri)
        ok = self._watch(vm, rec, req, peer, dest_uri, data_uri)
        with contextlib.suppress(PeerError, OSError):
            peer.close()
        if not ok:
            self._abort_destination(vm, req)
        return ok

    @staticmethod
    def _where(reply: dict[str, Any], req: Request) -> tuple[str, str | None]:
        dest_uri = reply.get("libvirtUri")
        data_uri = reply.get("migrationUri")
        if not isinstance(dest_uri, str) or not dest_uri:
            raise ValueError("its migrationCreate reply has no libvirtUri")
        if req.dstqemu:
            data_uri = f"tcp://{req.dstqemu}"
        return dest_uri, data_uri if isinstance(data_uri, str) and data_uri else None

    def _watch(self, vm: Vm, rec: Record, req: Request, peer: Peer, dest_uri: str,
               data_uri: str | None) -> bool:
        """libvirt's migration on a thread of its own; this one pings the destination,
        honours cancel, destroy and the timeout, and returns as soon as libvirt does."""
        finished = threading.Event()
        error: list[str] = []

        def run() -> None:
            try:
                self.ctx.host.migrate(vm.vm_id, dest_uri, data_uri, req.bandwidth,
                                      req.tunnelled)
            except HostError as e:
                error.append(str(e))
            finally:
                finished.set()
                rec.wake.set()

        threading.Thread(target=run, name=f"libvirt-migrate-{vm.vm_id[:8]}",
                         daemon=True).start()
        deadline = time.monotonic() + self.ctx.settings.migration_timeout
        next_ping = time.monotonic() + _PING
        why = ""
        while not finished.is_set():
            rec.wake.wait(_TICK)
            rec.wake.clear()
            if finished.is_set():
                break
            if not why:
                why = self._why_stop(vm, rec, deadline)
                if not why and time.monotonic() >= next_ping:
                    why = self._ping(vm, peer, req)
                    next_ping = time.monotonic() + _PING
                if why:
                    log.warning("VM %s: aborting its migration: %s", vm.vm_id, why)
                    with contextlib.suppress(HostError):
                        self.ctx.host.abort_job(vm.vm_id)
        if not error:
            rec.end(DONE, f"migrated to {req.dst}")
            log.info("VM %s: migrated to %s in %.2fs", vm.vm_id, req.dst,
                     time.time() - rec.started_at)
            return True
        if rec.cancel.is_set():
            rec.end(CANCELED, f"canceled: {error[0]}")
        else:
            rec.end(FAILED, f"{why}: {error[0]}" if why else f"libvirt: {error[0]}")
        log.warning("VM %s: migration to %s %s: %s", vm.vm_id, req.dst, rec.state, rec.message)
        return False

    def _why_stop(self, vm: Vm, rec: Record, deadline: float) -> str:
        if rec.cancel.is_set():
            return "canceled by the client"
        if vm.interrupt.is_set():
            return "the VM is being destroyed"
        if self._closed.is_set():
            return "the agent is stopping"
        if time.monotonic() >= deadline:
            return f"not done within migration_timeout ({self.ctx.settings.migration_timeout}s)"
        return ""

    def _ping(self, vm: Vm, peer: Peer, req: Request) -> str:
        """"" while the destination agent is there and still expects the VM."""
        try:
            state = peer.call("migrateStatus", vm.vm_id).get("migrationStats", {})
        except PeerError as e:
            return f"destination agent {req.dst} gone ({e})"
        if isinstance(state, dict) and state.get("state") in (FAILED, CANCELED):
            return f"destination {req.dst} gave up: {state.get('message', '')}"
        return ""

    def _abort_destination(self, vm: Vm, req: Request) -> None:
        """Tell the destination to drop its half-created VM (a fresh connection: the
        handshake's may be what broke)."""
        assert self.connect is not None
        try:
            peer = self.connect(req.dst, 10.0)
            try:
                peer.call("destroy", vm.vm_id)
            finally:
                with contextlib.suppress(PeerError, OSError):
                    peer.close()
        except PeerError as e:
            # noVM: it already dropped it; unreachable: its own timeout drops it.
            log.info("VM %s: destination %s not told to drop it: %s", vm.vm_id, req.dst, e)

    def _after_source(self, vm: Vm) -> None:
        """The guest runs on the destination: after_ hooks, then forget it here."""
        xml = vm.xml
        self.ctx.hooks.run_after(VM_MIGRATE_SOURCE.after, xml, vm)
        for ref, props in custom_devices(vm, xml):
            self.ctx.hooks.run_after(DEVICE_MIGRATE_SOURCE.after, ref.xml, vm, props)
        with vm.lock:
            vm.exit_message = "migrated"
            vm.set_status(DOWN)
            self.ctx.registry.remove(vm)
            self.ctx.host.forget(vm.vm_id)

    # --- destination ---------------------------------------------------------------

    def libvirt_uri(self) -> tuple[str, str]:
        """(libvirt URI, data URI) a peer migrates to this host with."""
        settings = self.ctx.settings
        uri = settings.migration_uri
        if not uri:
            own = urllib.parse.urlsplit(self.ctx.host.uri)
            uri = (self.ctx.host.uri if own.hostname
                   else f"qemu+tls://{socket.getfqdn()}/system")
        address = settings.migration_address or urllib.parse.urlsplit(uri).hostname or ""
        return uri, f"tcp://{address}" if address else ""

    def create(self, params: Any, _incoming_limit: Any = None) -> Created:
        if not isinstance(params, dict):
            raise VdsmError(Code.MIGRATE_ERR, f"params: expected a struct, got {show(params)}")
        xml = params.get("_srcDomXML", params.get("xml"))
        if xml is None:
            raise VdsmError(Code.MIGRATE_ERR, "_srcDomXML: missing (the source's domain XML)")
        vm_id = params.get("vmId")
        if isinstance(vm_id, str) and self.ctx.registry.find(vm_id.lower()) is not None:
            raise VdsmError(Code.EXIST, f"VM {vm_id} already exists on this host")
        try:
            # The client policy, as for any create (its <metadata> is the agent's own).
            req = parse_create({"vmId": vm_id, "xml": xml, "custom": params.get("custom")},
                               client_policy(self.ctx))
        except VdsmError as e:
            raise VdsmError(Code.MIGRATE_ERR, "migrationCreate: " + e.message.removeprefix(
                "bad create params: ")) from None
        self._check_props(req.vm_props, req.xml_device_props)
        with contextlib.suppress(HostError):
            self.ctx.host.state(req.vm_id)
            raise VdsmError(Code.EXIST, f"VM {req.vm_id}: libvirt here already has it")
        meta = dx.get_metadata(xml) or dx.Metadata()
        shown = dict(meta.params) or {"vmId": req.vm_id, "vmName": req.name}
        started = shown.pop("startedAt", params.get("startedAt"))
        assert req.xml is not None
        shown["devices"] = dx.device_views(req.xml, req.xml_device_props)
        vm = Vm(req.vm_id, req.name, shown, dict(req.vm_props), dict(req.xml_device_props),
                status=MIGRATION_DESTINATION, xml=req.xml,
                started_at=float(started) if isinstance(started, int | float) else time.time())
        rec = Record(vm.vm_id, "destination", str(params.get("src", "")), state=INCOMING)
        with vm.lock:
            self.ctx.registry.add(vm)
            try:
                for ref, props in custom_devices(vm, req.xml):
                    self.ctx.hooks.run(DEVICE_MIGRATE_DESTINATION.before, ref.xml, vm, props)
                self.ctx.hooks.run(VM_MIGRATE_DESTINATION.before, req.xml, vm)
            except BaseException:
                self.ctx.registry.remove(vm)
                raise
            self._record(rec)
        threading.Thread(target=self._incoming, args=(vm, rec),
                         name=f"incoming-{vm.vm_id[:8]}", daemon=True).start()
        uri, data = self.libvirt_uri()
        return Created(vm.full(), {"libvirtUri": uri, "migrationUri": data})

    def _check_props(self, vm_props: dict[str, str],
                     device_props: dict[str, dict[str, str]]) -> None:
        if not vm_props and not any(device_props.values()):
            return
        devices = [(dx.device_type(key), props) for key, props in device_props.items()]
        try:
            self.ctx.props.check(vm=vm_props, devices=devices)
        except PropertyError as e:
            raise VdsmError(Code.MIGRATE_ERR, f"custom properties this host does not "
                            f"accept: {e}") from None

    def _incoming(self, vm: Vm, rec: Record, after_hooks: bool = True) -> None:
        with vm.lock:
            if vm.removed:
                rec.end(FAILED, "dropped before it arrived")
                return
            with vm.doing(MIGRATING):
                why = self._wait_arrival(vm, rec) or self._arrived_as_described(vm)
            if why:
                self._drop_incoming(vm, rec, why)
                return
            with contextlib.suppress(HostError):
                vm.xml = self.ctx.host.xml(vm.vm_id)
            vm.params["devices"] = dx.device_views(vm.xml, vm.device_props)
            vm.set_status(UP)
            rec.end(DONE, "arrived")
            log.info("VM %s (%s) arrived by migration", vm.vm_id, vm.name)
        if after_hooks:
            self.ctx.hooks.run_after(VM_MIGRATE_DESTINATION.after, vm.xml, vm)
            for ref, props in custom_devices(vm, vm.xml):
                self.ctx.hooks.run_after(DEVICE_MIGRATE_DESTINATION.after, ref.xml, vm, props)

    def _wait_arrival(self, vm: Vm, rec: Record) -> str:
        """"" once libvirt runs the incoming domain, else why it will not."""
        deadline = time.monotonic() + self.ctx.settings.migration_timeout
        seen = False
        while True:
            try:
                state, _reason = self.ctx.host.state(vm.vm_id)
                seen = True
                if state == RUNNING:
                    return ""
            except HostError as e:
                if not e.no_domain:
                    log.warning("VM %s: incoming domain not readable: %s", vm.vm_id, e)
                elif seen:
                    return "libvirt dropped the incoming domain (the migration failed)"
            if vm.interrupt.is_set():
                return "aborted (destroyed, or the source gave up)"
            if self._closed.is_set():
                return "the agent is stopping"
            if time.monotonic() >= deadline:
                return (f"did not arrive within migration_timeout "
                        f"({self.ctx.settings.migration_timeout}s)")
            rec.wake.wait(_TICK)
            rec.wake.clear()

    def _arrived_as_described(self, vm: Vm) -> str:
        """"" if the domain libvirt received passes the client policy too: what the
        source's libvirt sent need not be what its agent described in migrationCreate."""
        try:
            arrived = dx.parse_domain(self.ctx.host.migratable_xml(vm.vm_id))
        except (HostError, dx.DomainXmlError) as e:
            return f"the arrived domain cannot be read: {e}"
        policy = client_policy(self.ctx)
        problems = check_domain(arrived, policy) + check_sizes(arrived, policy)
        if problems:
            return "the arrived domain is not what this host accepts: " + "; ".join(problems)
        return ""

    def _drop_incoming(self, vm: Vm, rec: Record, why: str) -> None:
        """Under vm.lock: nothing of the half-arrived VM is left here."""
        with contextlib.suppress(HostError):
            self.ctx.host.destroy(vm.vm_id)
        self.ctx.host.forget(vm.vm_id)
        vm.exit_message = why
        vm.set_status(DOWN)
        self.ctx.registry.remove(vm)
        rec.end(FAILED, why)
        log.warning("VM %s: incoming migration dropped: %s", vm.vm_id, why)

    # --- after an agent restart ------------------------------------------------------

    def adopt(self) -> int:
        """Follow the migrations libvirt still runs for VMs recovery adopted; how many.

        An outgoing one is watched to its end: gone from here, it finished (forgotten);
        still here, it failed (the VM is Up again). An incoming one is waited for as
        migrationCreate would have. Hooks: only the incoming VM's after_ events (its
        before_ ones ran in the agent that was killed); the source's after_ events do
        not run, the process that ran its before_ events is gone.
        """
        found = 0
        for vm in self.ctx.registry.all():
            try:
                stats = self.ctx.host.job_stats(vm.vm_id)
            except HostError:
                continue
            operation = stats.get("operation")
            if stats.get("type", JOB_NONE) == JOB_NONE or operation not in (
                    JOB_MIGRATION_OUT, JOB_MIGRATION_IN):
                continue
            found += 1
            if operation == JOB_MIGRATION_OUT:
                rec = Record(vm.vm_id, "source", "", state=RUNNING_STATE,
                             message="in flight when the agent started")
                rec.stats = stats
                self._record(rec)
                vm.set_status(MIGRATION_SOURCE)
                target: Callable[..., None] = self._follow_outgoing
            else:
                rec = Record(vm.vm_id, "destination", "", state=INCOMING,
                             message="incoming when the agent started")
                self._record(rec)
                vm.set_status(MIGRATION_DESTINATION)
                target = self._incoming
            threading.Thread(target=target, args=(vm, rec), daemon=True,
                             name=f"adopted-migration-{vm.vm_id[:8]}").start()
        return found

    def _follow_outgoing(self, vm: Vm, rec: Record) -> None:
        with vm.lock:
            if vm.removed:
                return
            with vm.doing(MIGRATING):
                while not self._closed.is_set():
                    try:
                        stats = self.ctx.host.job_stats(vm.vm_id)
                    except HostError as e:
                        if e.no_domain:
                            break
                        stats = {}
                    if stats.get("type", JOB_NONE) == JOB_NONE:
                        break
                    rec.stats = stats
                    rec.wake.wait(_TICK)
                    rec.wake.clear()
                status = self._status_now(vm)
            if status == DOWN:
                rec.end(DONE, "finished while the agent was away (no after_ hooks ran)")
                vm.exit_message = "migrated"
                vm.set_status(DOWN)
                self.ctx.registry.remove(vm)
                self.ctx.host.forget(vm.vm_id)
            else:
                rec.end(FAILED, "failed while the agent was away; the VM stayed here")
                vm.set_status(status)
            log.info("VM %s: migration in flight at start-up: %s", vm.vm_id, rec.state)
