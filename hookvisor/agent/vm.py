"""The agent's record of one VM, and VDSM's status strings."""

from __future__ import annotations

import threading
import time
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
    # Set once the agent itself stops the domain: its STOPPED event is ours, not a death.
    stopping: bool = False
    # Set once the record left the registry; a waiter on `lock` must not act on it.
    removed: bool = False
    # Previous CPU sample (wall ns, user ns, system ns) for cpuUser/cpuSys percentages.
    cpu_sample: tuple[int, int, int] | None = None
    # Serialises every operation on this VM.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"vmId": self.vm_id, "status": self.status}

    def full(self) -> dict[str, Any]:
        out = dict(self.params)
        out.update({"vmId": self.vm_id, "vmName": self.name, "status": self.status,
                    "custom": dict(self.vm_props)})
        if self.status == DOWN:
            out.update({"exitCode": self.exit_code, "exitMessage": self.exit_message})
        return out
