"""VDSM's error codes and the one exception the agent core raises.

The RPC adapter turns a `VdsmError` into VDSM's `{status: {code, message}}`.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    DONE = 0
    NO_VM = 1
    EXIST = 4
    CREATE_ERR = 9
    MIGRATE_ERR = 12
    UNEXPECTED = 16
    UNAVAIL = 40
    DESTROY_ERR = 42
    NOIMPL = 44
    HOTPLUG_DISK = 45
    HOTUNPLUG_DISK = 46
    HOTPLUG_NIC = 49
    HOTUNPLUG_NIC = 50
    MIG_IN_PROGRESS = 51
    UPDATE_DEVICE = 56
    HOOK_ERROR = 78
    RECOVERY = 99
    GENERAL = 100
    # VDSM's codes of its own hook-point verbs (issue 13).
    TICKET_ERR = 18
    SET_NUMBER_OF_CPUS_ERR = 60
    HOTPLUG_MEM = 70


# VDSM's names for the codes, as its clients see them in logs.
CODE_NAMES: dict[Code, str] = {
    Code.DONE: "Done",
    Code.NO_VM: "noVM",
    Code.EXIST: "exist",
    Code.CREATE_ERR: "createErr",
    Code.MIGRATE_ERR: "migrateErr",
    Code.UNEXPECTED: "unexpected",
    Code.UNAVAIL: "unavail",
    Code.DESTROY_ERR: "destroyErr",
    Code.NOIMPL: "noimpl",
    Code.HOTPLUG_DISK: "hotplugDisk",
    Code.HOTUNPLUG_DISK: "hotunplugDisk",
    Code.HOTPLUG_NIC: "hotplugNic",
    Code.HOTUNPLUG_NIC: "hotunplugNic",
    Code.MIG_IN_PROGRESS: "migInProgress",
    Code.UPDATE_DEVICE: "updateDevice",
    Code.HOOK_ERROR: "hookError",
    Code.RECOVERY: "recovery",
    Code.GENERAL: "general",
    Code.TICKET_ERR: "ticketErr",
    Code.SET_NUMBER_OF_CPUS_ERR: "setNumberOfCpusErr",
    Code.HOTPLUG_MEM: "hotplugMem",
}


class VdsmError(Exception):
    """An error a client should see, with VDSM's code."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{CODE_NAMES[self.code]} ({int(self.code)}): {self.message}"
