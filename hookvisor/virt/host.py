"""The libvirt adapter: one connection, the event loop, and the few calls the agent makes.

Everything is addressed by VM UUID (str) so the agent core never holds a
libvirt object. libvirt failures surface as HostError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import libvirt

log = logging.getLogger("hookvisor.host")

# Lifecycle event kinds the agent reacts to, by libvirt's numbers.
EVENT_STOPPED = libvirt.VIR_DOMAIN_EVENT_STOPPED
EVENT_SUSPENDED = libvirt.VIR_DOMAIN_EVENT_SUSPENDED
EVENT_RESUMED = libvirt.VIR_DOMAIN_EVENT_RESUMED

LifecycleCallback = Callable[[str, int, int], None]

# STOPPED event details as a client reads them, and whether each is a failure.
_STOP_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: ("guest shut down", False),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: ("destroyed outside the agent", False),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: ("crashed", True),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: ("migrated away", False),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: ("saved", False),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: ("failed", True),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: ("stopped after a snapshot", False),
}


# STOPPED details after which the guest lives on (in a save image, on another host).
STOPPED_NOT_DEATH = frozenset({libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED,
                               libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED})


def stop_reason(event: int, detail: int) -> tuple[str, bool]:
    """(exit message, abnormal) for the lifecycle event that ended a domain."""
    if event != EVENT_STOPPED:
        return "stopped", False
    return _STOP_DETAILS.get(detail, ("stopped", False))

_loop_lock = threading.Lock()
# Event domain handles freed together (Host._spend): a few KiB held at most.
_SPENT_BATCH = 64
_loop_started = False

# Stat groups for the bulk call; a group the driver lacks is skipped, not an error.
_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


class HostError(Exception):
    """A libvirt call failed: `no_domain`, no such domain; `disconnected`, no libvirtd."""

    def __init__(self, message: str, no_domain: bool = False,
                 disconnected: bool = False) -> None:
        super().__init__(message)
        self.no_domain = no_domain
        # The connection to libvirtd is down (the message says since when and why).
        self.disconnected = disconnected


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: int  # libvirt VIR_DOMAIN_* state
    reason: int
    xml: str


def _ensure_event_loop() -> None:
    """libvirt's default event loop, once per process, before any connection opens."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        # libvirt prints every error to stderr by default; we report them ourselves.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def kvm_usable() -> bool:
    """Whether /dev/kvm can be opened (exists is not enough: it may be denied)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_domain_type(driver: str, setting: str) -> str:
    """`test` on the test driver; else the setting, or kvm/qemu by /dev/kvm."""
    if driver.lower() == "test":
        return "test"
    if setting != "auto":
        return setting
    return "kvm" if kvm_usable() else "qemu"


# Error codes a dead connection raises; they also mean other things, so a call
# that gets one asks the connection whether it is still alive before giving up on it.
_LOSS_CODES = frozenset({
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_INTERNAL_ERROR,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
})

_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "connection error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
}


@dataclass(frozen=True)
class ConnectionState:
    """The libvirt connection as getVdsStats reports it."""

    uri: str
    connected: bool
    since: float  # wall-clock time of the last change (connected or lost)
    cause: str  # why it was lost; "" while connected since start
    last_error: str  # the last failed reconnect attempt, or the cause of the loss
    reconnects: int  # successful reconnections since the agent started


class Host:
    """One libvirt connection, replaced whole when it is lost.

    On a loss (close callback, or a call failing on a dead connection) the
    Host says so in every HostError and a thread reopens the connection with
    backoff, then registers the same event callbacks on the new one. The
    connection, its state and the kept domain handles change together under
    `_lock`, so a call sees either the old connection or the new, never a mix.
    """

    def __init__(self, uri: str, domain_type: str = "auto", reconnect_min: float = 0.5,
                 reconnect_max: float = 30.0) -> None:
        _ensure_event_loop()
        self.uri = uri
        self.reconnect_min = max(0.01, reconnect_min)
        self.reconnect_max = max(self.reconnect_min, reconnect_max)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise HostError(f"cannot connect to libvirt at {uri}: {e}") from None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._conn: Any = conn
        self._connected = True
        # _conn while connected, else None: changed with _connected, under _lock.
        self._usable: Any = conn
        self._since = time.time()
        self._lost_at = 0.0  # monotonic, for "lost 3.2s ago"
        self._cause = ""
        self._last_error = ""
        self._reconnects = 0
        self._reconnector: threading.Thread | None = None
        # (libvirt event id, relay): registered again on every new connection.
        self._relays: list[tuple[int, Callable[..., None]]] = []
        self._event_ids: list[int] = []
        self._listeners: list[Callable[[bool], None]] = []
        self.driver = conn.getType()
        self.domain_type = choose_domain_type(self.driver, domain_type)
        self.arch = platform.machine() or "x86_64"
        # Handles of the domains started here, by UUID: the calls that follow a
        # start need no lookup (a round trip to libvirtd on a real host). Drivers
        # resolve a handle by its UUID, so one stays good as long as a lookup would;
        # they belong to one connection and are dropped with it.
        self._doms: dict[str, Any] = {}
        # Event domain handles not let go of yet (see _spend).
        self._spent: list[Any] = []
        self._watch_close(conn)

    # --- the connection -------------------------------------------------------

    def _watch_close(self, conn: Any) -> None:
        def closed(_conn: Any, reason: int, _opaque: Any) -> None:
            if reason == libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
                return  # we closed it
            self._lost(conn, _CLOSE_REASONS.get(reason, f"closed (reason {reason})"))

        conn.registerCloseCallback(closed, None)

    def on_connection(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(False)` when the connection is lost, `listener(True)` once a
        new one is up with the event callbacks registered. Keep it short: it runs on
        libvirt's event thread or the reconnect thread."""
        self._listeners.append(listener)

    def connection(self) -> ConnectionState:
        with self._lock:
            return ConnectionState(self.uri, self._connected, self._since, self._cause,
                                   self._last_error, self._reconnects)

    @property
    def connected(self) -> bool:
        return self._connected

    def unavailable(self) -> str:
        """Why libvirt cannot be used now (for `unavail` replies); "" when it can."""
        with self._lock:
            if self._connected:
                return ""
            ago = time.monotonic() - self._lost_at
            text = f"libvirt connection to {self.uri} lost {ago:.1f}s ago: {self._cause}"
            if self._last_error and self._last_error != self._cause:
                text += f"; last attempt: {self._last_error}"
            return text + ("; not reconnecting: the agent is stopping" if self._stop.is_set()
                           else "; reconnecting")

    def _current(self) -> Any:
        """The live connection, or the HostError that says why there is none."""
        # One read, no lock: the calls of every verb pass here.
        conn = self._usable
        if conn is not None:
            return conn
        raise HostError(self.unavailable() or f"libvirt connection to {self.uri} lost",
                        disconnected=True)

    def _error(self, e: libvirt.libvirtError, conn: Any) -> HostError:
        """The one place a libvirtError becomes a HostError; notices a dead connection."""
        code = e.get_error_code()
        if code in _LOSS_CODES or "client socket is closed" in str(e):
            try:
                alive = bool(conn.isAlive())
            except libvirt.libvirtError:
                alive = False
            if not alive:
                self._lost(conn, str(e))
                with self._lock:
                    if not self._connected or conn is self._conn:
                        return HostError(self.unavailable() or str(e), disconnected=True)
                return HostError(f"libvirt connection to {self.uri} was lost during the "
                                 f"call ({e}); it is back now, retry", disconnected=True)
        return HostError(str(e), no_domain=code == libvirt.VIR_ERR_NO_DOMAIN)

    def _lost(self, conn: Any, cause: str) -> None:
        with self._lock:
            if conn is not self._conn or not self._connected:
                return  # an old connection, or already known
            self._connected = False
            self._usable = None
            self._since = time.time()
            self._lost_at = time.monotonic()
            self._cause = cause
            self._last_error = cause
            self._doms.clear()
            if not self._stop.is_set():
                self._reconnector = threading.Thread(target=self._reconnect, args=(conn,),
                                                     name="libvirt-reconnect", daemon=True)
                self._reconnector.start()
        log.error("libvirt connection to %s lost: %s; reconnecting", self.uri, cause)
        self._tell(False)

    def _tell(self, connected: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(connected)
            except Exception:
                log.exception("libvirt connection listener failed")

    def _register(self, conn: Any) -> list[int]:
        self._watch_close(conn)
        with self._lock:
            relays = list(self._relays)
        return [conn.domainEventRegisterAny(None, event_id, relay, None)
                for event_id, relay in relays]

    def _reconnect(self, dead: Any) -> None:
        """Until a new connection is up (or close()): open, with doubling backoff."""
        with self._lock:
            ids, self._event_ids = self._event_ids, []
        _release(dead, ids)
        delay = self.reconnect_min
        while not self._stop.is_set():
            try:
                conn = libvirt.open(self.uri)
                try:
                    ids = self._register(conn)
                except libvirt.libvirtError:
                    _release(conn, [])
                    raise
            except libvirt.libvirtError as e:
                with self._lock:
                    self._last_error = str(e)
                log.debug("libvirt reconnect to %s failed: %s", self.uri, e)
                # Jitter: agents on many hosts do not all knock at once.
                if self._stop.wait(delay + random.uniform(0, delay / 4)):
                    return
                delay = min(delay * 2, self.reconnect_max)
                continue
            with self._lock:
                stopped = self._stop.is_set()
                if not stopped:
                    down_for = time.monotonic() - self._lost_at
                    self._conn = conn
                    self._event_ids = ids
                    self._doms.clear()
                    self._connected = True
                    self._usable = conn
                    self._since = time.time()
                    self._reconnects += 1
                    self._reconnector = None
            if stopped:
                _release(conn, ids)
                return
            log.warning("libvirt connection to %s restored after %.1fs", self.uri, down_for)
            self._tell(True)
            return

    # --- events ---------------------------------------------------------------

    def on_lifecycle(self, callback: LifecycleCallback,
                     events: Collection[int] | None = None) -> None:
        """Call `callback(uuid, event, detail)` from the event thread; keep it short.

        With `events`, only for those kinds. Kept across reconnections.
        """
        wanted = None if events is None else frozenset(events)

        def relay(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            self._spend(dom)
            # Every start and destroy raises events: the others cost no libvirt call.
            if wanted is not None and event not in wanted:
                return
            try:
                callback(dom.UUIDString(), event, detail)
            except Exception:
                log.exception("lifecycle event handler failed")

        self._subscribe(libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, relay)

    def on_device_removed(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(uuid, alias)` when a guest released a device (DEVICE_REMOVED).

        From the event thread; keep it short. Kept across reconnections.
        """
        def relay(_conn: Any, dom: Any, alias: str, _opaque: Any) -> None:
            try:
                callback(dom.UUIDString(), alias)
            except Exception:
                log.exception("device-removed event handler failed")

        self._subscribe(libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, relay)

    def _spend(self, dom: Any) -> None:
        """Keep an event's domain handle, to let go of it with others later.

        On the event thread only. Freeing a handle lets the GIL go (libvirt-python
        frees it with threads allowed), and an event comes while a verb is at
        work: freed one by one, each event made the verb and the event thread
        hand the GIL to each other one more time. A batch costs about one.
        """
        spent = self._spent
        spent.append(dom)
        if len(spent) >= _SPENT_BATCH:
            self._spent = []
            spent.clear()  # the handles are freed here, in a row

    def _subscribe(self, event_id: int, relay: Callable[..., None]) -> None:
        with self._lock:
            self._relays.append((event_id, relay))
            if not self._connected:
                return  # the reconnect registers it
            conn = self._conn
        # Not under the lock: a remote call, and the close callback may want the lock.
        try:
            callback_id = conn.domainEventRegisterAny(None, event_id, relay, None)
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None
        with self._lock:
            if conn is self._conn:
                self._event_ids.append(callback_id)

    def close(self) -> None:
        """Stop reconnecting and let go of the connection (never waits on libvirtd)."""
        self._stop.set()
        with self._lock:
            thread = self._reconnector
            conn, ids = self._conn, self._event_ids
            self._event_ids = []
            self._doms.clear()
            connected = self._connected
            self._connected = False
            self._usable = None
            if connected:
                self._cause = "closed by the agent"
                self._since = time.time()
                self._lost_at = time.monotonic()
        if thread is not None:
            # It only waits on the stop event or in libvirt.open; a daemon thread.
            thread.join(5)
        if connected:
            _release(conn, ids)

    # --- domains --------------------------------------------------------------

    def _lookup(self, uuid: str) -> tuple[Any, Any]:
        """(connection, domain handle): the kept handle, else a lookup."""
        conn = self._current()
        dom = self._doms.get(uuid)  # a dict read is atomic; a stale handle fails loudly
        if dom is not None:
            return conn, dom
        try:
            return conn, conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def _keep(self, conn: Any, uuid: str, dom: Any) -> None:
        with self._lock:
            if conn is self._conn and self._connected:  # not a handle of a dead connection
                self._doms[uuid] = dom

    def forget(self, uuid: str) -> None:
        """The agent is done with this domain: drop its handle, if one is kept."""
        with self._lock:
            self._doms.pop(uuid, None)

    def start(self, xml: str, paused: bool, uuid: str | None = None) -> str:
        """Start a transient domain (nothing left behind on failure); returns its live XML.

        With `uuid` (the domain's), its handle is kept until destroy() or forget().
        """
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        conn = self._current()
        try:
            try:
                dom = conn.createXML(xml, flags)
            except libvirt.libvirtError as e:
                if not paused or e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                    raise
                # The test driver has no START_PAUSED: start, then pause at once.
                dom = conn.createXML(xml, 0)
                try:
                    dom.suspend()
                except libvirt.libvirtError:
                    dom.destroy()
                    raise
            try:
                live = str(dom.XMLDesc(0))
            except libvirt.libvirtError:
                # The caller reports a failed create: the domain must not outlive it.
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                raise
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None
        if uuid is not None:
            self._keep(conn, uuid, dom)
        return live

    def xml(self, uuid: str) -> str:
        conn, dom = self._lookup(uuid)
        try:
            return str(dom.XMLDesc(0))
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def state(self, uuid: str) -> tuple[int, int]:
        conn, dom = self._lookup(uuid)
        try:
            state, reason = dom.state()
            return int(state), int(reason)
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def suspend(self, uuid: str) -> None:
        conn, dom = self._lookup(uuid)
        try:
            dom.suspend()
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def resume(self, uuid: str) -> None:
        conn, dom = self._lookup(uuid)
        try:
            dom.resume()
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def destroy(self, uuid: str) -> None:
        try:
            conn, dom = self._lookup(uuid)
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                raise self._error(e, conn) from None
        except HostError as error:
            if error.no_domain:
                self.forget(uuid)
            raise
        self.forget(uuid)

    def _call(self, uuid: str, call: Callable[[Any], Any]) -> Any:
        """`call(domain handle)`, its libvirt error as the one HostError."""
        conn, dom = self._lookup(uuid)
        try:
            return call(dom)
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def save(self, uuid: str, path: str) -> None:
        """Save the domain's memory to `path` and stop it (libvirt resumes it if it fails)."""
        self._call(uuid, lambda dom: dom.save(path))
        self.forget(uuid)

    def abort_job(self, uuid: str) -> None:
        """Cancel the domain's job in progress (a save, a migration): libvirt keeps the
        guest running here."""
        self._call(uuid, lambda dom: dom.abortJob())

    def saved_xml(self, path: str) -> str:
        """The domain XML stored in a save image."""
        conn = self._current()
        try:
            return str(conn.saveImageGetXMLDesc(path, 0))
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def restore(self, path: str, uuid: str) -> str:
        """Start the domain saved in `path` (the image is left as it is); its live XML."""
        conn = self._current()
        try:
            conn.restore(path)
            dom = conn.lookupByUUIDString(uuid)
            live = str(dom.XMLDesc(0))
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None
        self._keep(conn, uuid, dom)
        return live

    def set_metadata(self, uuid: str, element: str, key: str, namespace: str) -> None:
        """Replace the live domain's metadata element of `namespace` (no namespace
        prefix in `element`: libvirt puts it and its children in `namespace`)."""
        self._call(uuid, lambda dom: dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, key, namespace,
            libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def attach(self, uuid: str, device_xml: str) -> None:
        self._call(uuid, lambda dom: dom.attachDeviceFlags(
            device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def detach(self, uuid: str, device_xml: str) -> None:
        """Ask the guest to release the device; done only at its DEVICE_REMOVED event."""
        self._call(uuid, lambda dom: dom.detachDeviceFlags(
            device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def update_device(self, uuid: str, device_xml: str) -> None:
        self._call(uuid, lambda dom: dom.updateDeviceFlags(
            device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def active_domains(self) -> list[DomainInfo]:
        """Every running or paused domain, with its live XML (for recovery)."""
        out = []
        conn = self._current()
        try:
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None
        for dom in doms:
            try:
                state, reason = dom.state()
                out.append(DomainInfo(dom.UUIDString(), dom.name(), state, reason,
                                      dom.XMLDesc(0)))
            except libvirt.libvirtError as e:
                error = self._error(e, conn)
                if error.disconnected:
                    raise error from None  # a partial list would read as deaths
                continue  # gone while we looked
        return out

    def all_stats(self) -> dict[str, dict[str, Any]]:
        """One bulk getAllDomainStats call: {uuid: {libvirt stat key: value}}."""
        conn = self._current()
        try:
            records = conn.getAllDomainStats(
                _STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            )
            return {dom.UUIDString(): dict(stats) for dom, stats in records}
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    def stats_for(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """Bulk stats of the named domains (those that are gone are left out)."""
        conn = self._current()
        doms = []
        for uuid in uuids:
            try:
                dom_conn, dom = self._lookup(uuid)
            except HostError as e:
                if e.disconnected:
                    raise
                continue
            if dom_conn is conn:
                doms.append(dom)
        if not doms:
            return {}
        try:
            records = conn.domainListGetStats(doms, _STATS, 0)
            return {dom.UUIDString(): dict(stats) for dom, stats in records}
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    # --- host -----------------------------------------------------------------

    def host_info(self) -> dict[str, Any]:
        conn = self._current()
        try:
            model, mem_mib, cpus, mhz, nodes, sockets, cores, _threads = conn.getInfo()
            return {
                "hostname": conn.getHostname(),
                "cpuModel": model,
                "memSize": mem_mib,
                "cpuThreads": cpus,
                "cpuSpeed": mhz,
                "numaNodes": nodes,
                "cpuSockets": sockets * nodes,
                "cpuCores": cores * sockets * nodes,
                "libvirtVersion": conn.getLibVersion(),
                "driver": self.driver,
            }
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None

    # --- limits a client's request is checked against (read once, then kept) ---
    # Kept in __dict__ on first success (a failure is asked again next time).

    def max_vcpus(self) -> int:
        """Most vCPUs libvirt gives one domain of this host's domain type; 0 if unknown."""
        if "_max_vcpus" not in self.__dict__:
            try:
                conn = self._current()
                try:
                    value = int(conn.getMaxVcpus(self.domain_type))
                except libvirt.libvirtError:
                    value = int(conn.getMaxVcpus(None))
            except (libvirt.libvirtError, HostError):
                return 0
            self.__dict__["_max_vcpus"] = value
        return int(self.__dict__["_max_vcpus"])

    def memory_mib(self) -> int:
        """The host's memory in MiB (libvirt's node info); 0 if unknown."""
        if "_memory_mib" not in self.__dict__:
            try:
                conn = self._current()
                self.__dict__["_memory_mib"] = int(conn.getInfo()[1])
            except (libvirt.libvirtError, HostError):
                return 0
        return int(self.__dict__["_memory_mib"])

    def emulators(self) -> frozenset[str]:
        """The emulator binaries libvirt's capabilities list for this host."""
        if "_emulators" not in self.__dict__:
            import xml.etree.ElementTree as ET

            try:
                conn = self._current()
                caps = ET.fromstring(conn.getCapabilities())
            except (libvirt.libvirtError, HostError, ET.ParseError):
                return frozenset()
            self.__dict__["_emulators"] = frozenset(
                e.text.strip() for e in caps.iter("emulator") if e.text)
        found: frozenset[str] = self.__dict__["_emulators"]
        return found

    # --- migration (issue 9) ----------------------------------------------------

    def migratable_xml(self, uuid: str) -> str:
        """The domain XML as libvirt sends it to a migration's destination (no live-only
        parts: no seclabel labels, aliases or tap names of this host)."""
        return str(self._call(uuid, lambda dom: dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)))

    def migrate(self, uuid: str, dest_uri: str, data_uri: str | None = None,
                bandwidth_mib: int = 0, tunnelled: bool = False) -> None:
        """Live, peer-to-peer migration to the libvirt at `dest_uri`; returns when done.

        `data_uri` (tcp://HOST) is where QEMU sends the memory (not with
        `tunnelled`: then it goes through libvirtd's own connection);
        `bandwidth_mib` in MiB/s, 0: libvirt's default. On failure libvirt keeps
        the guest running here and cleans up the destination.
        """
        params: dict[str, Any] = {}
        flags = MIGRATE_FLAGS
        if tunnelled:
            flags |= libvirt.VIR_MIGRATE_TUNNELLED
        elif data_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = data_uri
        if bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
        self._call(uuid, lambda dom: dom.migrateToURI3(dest_uri, params, flags))
        self.forget(uuid)

    def job_stats(self, uuid: str) -> dict[str, Any]:
        """libvirt's statistics of the domain's current job ({"type": 0}: none)."""
        return dict(self._call(uuid, lambda dom: dom.jobStats(0)))

    def on_job_completed(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        """Call `callback(uuid, stats)` when a domain's job completes (a migration's
        final statistics, downtime included, even though the domain has left).

        From the event thread; keep it short. Kept across reconnections.
        """
        def relay(_conn: Any, dom: Any, stats: dict[str, Any], _opaque: Any) -> None:
            try:
                callback(dom.UUIDString(), dict(stats))
            except Exception:
                log.exception("job-completed event handler failed")

        self._subscribe(libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, relay)


    # --- VDSM's other hook points (issue 13) ----------------------------------

    def set_vcpus(self, uuid: str, count: int) -> None:
        """The running domain's vCPU count, live (within its <vcpu> maximum)."""
        self._call(uuid, lambda dom: dom.setVcpusFlags(count, libvirt.VIR_DOMAIN_AFFECT_LIVE))

    def vcpus(self, uuid: str) -> int:
        """The running domain's live vCPU count."""
        return int(self._call(uuid, lambda dom: dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)))

    def node_devices(self, flags: int = 0) -> list[tuple[str, str]]:
        """(name, XML) of the host's node devices libvirt lists (listAllDevices)."""
        conn = self._current()
        try:
            devices = conn.listAllDevices(flags)
        except libvirt.libvirtError as e:
            raise self._error(e, conn) from None
        out = []
        for dev in devices:
            try:
                out.append((str(dev.name()), str(dev.XMLDesc(0))))
            except libvirt.libvirtError:
                continue  # gone while we looked (VDSM skips it too)
        return out


def _release(conn: Any, event_ids: list[int]) -> None:
    """Let go of a connection, dead or alive: nothing here may fail or wait long."""
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    for callback_id in event_ids:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback_id)
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


# --- migration (issue 9) --------------------------------------------------------

EVENT_STARTED = libvirt.VIR_DOMAIN_EVENT_STARTED
# Live and peer to peer: the source libvirtd talks to the destination's itself,
# so the agents only hand over the domain's identity and hooks.
MIGRATE_FLAGS = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
JOB_NONE = libvirt.VIR_DOMAIN_JOB_NONE
# jobStats "operation" values of a migration, as seen by each end.
JOB_MIGRATION_OUT = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT
JOB_MIGRATION_IN = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN
RUNNING = libvirt.VIR_DOMAIN_RUNNING
