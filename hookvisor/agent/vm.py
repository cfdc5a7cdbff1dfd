"""The agent's record of one VM, and VDSM's status strings."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt

WAIT_FOR_LAUNCH = "WaitForLaunch"
POWERING_UP = "Powering up"
UP = "Up"
PAUSED = "Paused"
SAVING_STATE = "Saving State"
RESTORING_STATE = "Restoring state"
MIGRATION_SOURCE = "Migration Source"
MIGRATION_DESTINATION = "Migration Destination"
DOWN = "Down"

log = logging.getLogger("hookvisor.agent")

# What the agent is doing to a VM (Vm.operation); None: nothing.
STARTING = "starting"
HIBERNATING = "hibernating"
RESTORING = "restoring"
HOTPLUGGING = "hot-plugging"
UPDATING = "updating-device"
MIGRATING = "migrating"
DESTROYING = "destroying"
# Operations that stop the domain themselves: its STOPPED event is theirs, not a death.
STOPS_DOMAIN = frozenset({HIBERNATING, MIGRATING, DESTROYING})

# listener(vm, old status, new status); runs on the thread that changed it.
StatusListener = Callable[["Vm", str, str], None]


def status_from_libvirt(state: int, reason: int) -> str:
    """VDSM's status for a libvirt domain state (recovery, outside changes)."""
    if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        return DOWN
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_SAVE:
            return SAVING_STATE
        if reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            return MIGRATION_SOURCE
        return PAUSED
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return PAUSED
    # running, blocked, being shut down by the guest, no state: the VM is there.
    return UP


@dataclass(eq=False)
class Vm:
    vm_id: str
    name: str
    # The creation params as the client would see them again (list full=True).
    params: dict[str, Any]
    vm_props: dict[str, str]
    # device key (virt.domain_xml.device_key) -> custom properties
    device_props: dict[str, dict[str, str]]
    status: str = WAIT_FOR_LAUNCH
    # The last domain XML the VM ran with, for after_vm_destroy when it is gone.
    xml: str = ""
    started_at: float = field(default_factory=time.time)
    exit_code: int = 0
    exit_message: str = ""
    # The one operation in progress (STARTING, HIBERNATING, ...), set under `lock`.
    operation: str | None = None
    # Set by destroy before it waits for `lock`: an operation waiting on the guest
    # (a hot-unplug) gives up at once instead of holding destroy back.
    interrupt: threading.Event = field(default_factory=threading.Event, repr=False)
    # Told of every status change (the registry's listeners, shared).
    listeners: list[StatusListener] = field(default_factory=list, repr=False)
    # Set once the record left the registry; a waiter on `lock` must not act on it.
    removed: bool = False
    # Previous CPU sample (wall ns, user ns, system ns) for cpuUser/cpuSys percentages.
    cpu_sample: tuple[int, int, int] | None = None
    # Serialises every operation on this VM.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def set_status(self, status: str) -> None:
        """The one way a status changes: listeners hear of it (a listener's failure is logged)."""
        old, self.status = self.status, status
        if old == status:
            return
        for listener in list(self.listeners):
            try:
                listener(self, old, status)
            except Exception:
                log.exception("VM %s: status listener failed", self.vm_id)

    @contextlib.contextmanager
    def doing(self, operation: str) -> Iterator[None]:
        """Mark `operation` in progress for the block (call with `lock` held)."""
        if self.operation is not None:
            # The lock serialises verbs: only a re-entry can find one in progress.
            raise RuntimeError(f"VM {self.vm_id}: {operation} while {self.operation}")
        self.operation = operation
        try:
            yield
        finally:
            self.operation = None

    def summary(self) -> dict[str, Any]:
        return {"vmId": self.vm_id, "status": self.status}

    def full(self) -> dict[str, Any]:
        out = dict(self.params)
        out.update({"vmId": self.vm_id, "vmName": self.name, "status": self.status,
                    "custom": dict(self.vm_props)})
        if self.status == DOWN:
            out.update({"exitCode": self.exit_code, "exitMessage": self.exit_message})
        return out
