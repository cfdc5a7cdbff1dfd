"""The libvirt adapter: one connection, the event loop, and the few calls the agent makes.

Everything is addressed by VM UUID (str) so the agent core never holds a
libvirt object. libvirt failures surface as HostError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
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


def stop_reason(event: int, detail: int) -> tuple[str, bool]:
    """(exit message, abnormal) for the lifecycle event that ended a domain."""
    if event != EVENT_STOPPED:
        return "stopped", False
    return _STOP_DETAILS.get(detail, ("stopped", False))

_loop_lock = threading.Lock()
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
    """A libvirt call failed; `no_domain` says the domain was not there."""

    def __init__(self, message: str, no_domain: bool = False) -> None:
        super().__init__(message)
        self.no_domain = no_domain


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


def _kvm_usable() -> bool:
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
    return "kvm" if _kvm_usable() else "qemu"


def _wrap(e: libvirt.libvirtError) -> HostError:
    code = e.get_error_code()
    return HostError(str(e), no_domain=code == libvirt.VIR_ERR_NO_DOMAIN)


class Host:
    def __init__(self, uri: str, domain_type: str = "auto") -> None:
        _ensure_event_loop()
        self.uri = uri
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise HostError(f"cannot connect to libvirt at {uri}: {e}") from None
        self.driver = self._conn.getType()
        self.domain_type = choose_domain_type(self.driver, domain_type)
        self.arch = platform.machine() or "x86_64"
        self._callback_id: int | None = None
        # Handles of the domains started here, by UUID: the calls that follow a
        # start need no lookup (a round trip to libvirtd on a real host). Drivers
        # resolve a handle by its UUID, so one stays good as long as a lookup would.
        self._doms: dict[str, Any] = {}
        self._conn.registerCloseCallback(self._closed, None)

    @staticmethod
    def _closed(_conn: Any, reason: int, _opaque: Any) -> None:
        # No reconnection yet: say it loudly, the operator restarts the agent.
        if reason != libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
            log.error("libvirt connection lost (reason %d); restart the agent", reason)

    # --- events ---------------------------------------------------------------

    def on_lifecycle(self, callback: LifecycleCallback,
                     events: Collection[int] | None = None) -> None:
        """Call `callback(uuid, event, detail)` from the event thread; keep it short.

        With `events`, only for those kinds.
        """
        wanted = None if events is None else frozenset(events)

        def relay(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            # Every start and destroy raises events: the others cost no libvirt call.
            if wanted is not None and event not in wanted:
                return
            try:
                callback(dom.UUIDString(), event, detail)
            except Exception:
                log.exception("lifecycle event handler failed")

        self._callback_id = self._conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, relay, None
        )

    def close(self) -> None:
        self._doms.clear()
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.unregisterCloseCallback()
        if self._callback_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(self._callback_id)
            self._callback_id = None
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    # --- domains --------------------------------------------------------------

    def _lookup(self, uuid: str) -> Any:
        dom = self._doms.get(uuid)
        if dom is not None:
            return dom
        try:
            return self._conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            raise _wrap(e) from None

    def forget(self, uuid: str) -> None:
        """The agent is done with this domain: drop its handle, if one is kept."""
        self._doms.pop(uuid, None)

    def start(self, xml: str, paused: bool, uuid: str | None = None) -> str:
        """Start a transient domain (nothing left behind on failure); returns its live XML.

        With `uuid` (the domain's), its handle is kept until destroy() or forget().
        """
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        try:
            try:
                dom = self._conn.createXML(xml, flags)
            except libvirt.libvirtError as e:
                if not paused or e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                    raise
                # The test driver has no START_PAUSED: start, then pause at once.
                dom = self._conn.createXML(xml, 0)
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
            raise _wrap(e) from None
        if uuid is not None:
            self._doms[uuid] = dom
        return live

    def xml(self, uuid: str) -> str:
        try:
            return str(self._lookup(uuid).XMLDesc(0))
        except libvirt.libvirtError as e:
            raise _wrap(e) from None

    def state(self, uuid: str) -> tuple[int, int]:
        try:
            state, reason = self._lookup(uuid).state()
            return int(state), int(reason)
        except libvirt.libvirtError as e:
            raise _wrap(e) from None

    def suspend(self, uuid: str) -> None:
        try:
            self._lookup(uuid).suspend()
        except libvirt.libvirtError as e:
            raise _wrap(e) from None

    def resume(self, uuid: str) -> None:
        try:
            self._lookup(uuid).resume()
        except libvirt.libvirtError as e:
            raise _wrap(e) from None

    def destroy(self, uuid: str) -> None:
        try:
            self._lookup(uuid).destroy()
        except libvirt.libvirtError as e:
            error = _wrap(e)
            if error.no_domain:
                self.forget(uuid)
            raise error from None
        self.forget(uuid)

    def active_domains(self) -> list[DomainInfo]:
        """Every running or paused domain, with its live XML (for recovery)."""
        out = []
        try:
            doms = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as e:
            raise _wrap(e) from None
        for dom in doms:
            try:
                state, reason = dom.state()
                out.append(DomainInfo(dom.UUIDString(), dom.name(), state, reason,
                                      dom.XMLDesc(0)))
            except libvirt.libvirtError:
                continue  # gone while we looked
        return out

    def all_stats(self) -> dict[str, dict[str, Any]]:
        """One bulk getAllDomainStats call: {uuid: {libvirt stat key: value}}."""
        try:
            records = self._conn.getAllDomainStats(
                _STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            )
        except libvirt.libvirtError as e:
            raise _wrap(e) from None
        return {dom.UUIDString(): dict(stats) for dom, stats in records}

    def stats_for(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """Bulk stats of the named domains (those that are gone are left out)."""
        doms = []
        for uuid in uuids:
            try:
                doms.append(self._lookup(uuid))
            except HostError:
                continue
        if not doms:
            return {}
        try:
            records = self._conn.domainListGetStats(doms, _STATS, 0)
        except libvirt.libvirtError as e:
            raise _wrap(e) from None
        return {dom.UUIDString(): dict(stats) for dom, stats in records}

    # --- host -----------------------------------------------------------------

    def host_info(self) -> dict[str, Any]:
        try:
            model, mem_mib, cpus, mhz, nodes, sockets, cores, _threads = self._conn.getInfo()
            return {
                "hostname": self._conn.getHostname(),
                "cpuModel": model,
                "memSize": mem_mib,
                "cpuThreads": cpus,
                "cpuSpeed": mhz,
                "numaNodes": nodes,
                "cpuSockets": sockets * nodes,
                "cpuCores": cores * sockets * nodes,
                "libvirtVersion": self._conn.getLibVersion(),
                "driver": self.driver,
            }
        except libvirt.libvirtError as e:
            raise _wrap(e) from None

    # --- limits a client's request is checked against (read once, then kept) ---
    # Kept in __dict__ on first success (a failure is asked again next time).

    def max_vcpus(self) -> int:
        """Most vCPUs libvirt gives one domain of this host's domain type; 0 if unknown."""
        if "_max_vcpus" not in self.__dict__:
            try:
                try:
                    value = int(self._conn.getMaxVcpus(self.domain_type))
                except libvirt.libvirtError:
                    value = int(self._conn.getMaxVcpus(None))
            except libvirt.libvirtError:
                return 0
            self.__dict__["_max_vcpus"] = value
        return int(self.__dict__["_max_vcpus"])

    def memory_mib(self) -> int:
        """The host's memory in MiB (libvirt's node info); 0 if unknown."""
        if "_memory_mib" not in self.__dict__:
            try:
                self.__dict__["_memory_mib"] = int(self._conn.getInfo()[1])
            except libvirt.libvirtError:
                return 0
        return int(self.__dict__["_memory_mib"])

    def emulators(self) -> frozenset[str]:
        """The emulator binaries libvirt's capabilities list for this host."""
        if "_emulators" not in self.__dict__:
            import xml.etree.ElementTree as ET

            try:
                caps = ET.fromstring(self._conn.getCapabilities())
            except (libvirt.libvirtError, ET.ParseError):
                return frozenset()
            self.__dict__["_emulators"] = frozenset(
                e.text.strip() for e in caps.iter("emulator") if e.text)
        found: frozenset[str] = self.__dict__["_emulators"]
        return found
