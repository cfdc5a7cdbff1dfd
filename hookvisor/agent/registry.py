"""The VMs the agent knows: a map behind one lock, held only to read or change the map."""

from __future__ import annotations

import threading

from hookvisor.agent.vm import StatusListener, Vm
from hookvisor.errors import Code, VdsmError


class VmRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vms: dict[str, Vm] = {}
        # Shared by every VM added: one subscription hears all status changes.
        self._listeners: list[StatusListener] = []

    def on_status(self, listener: StatusListener) -> None:
        """Call `listener(vm, old, new)` on every status change of every VM (keep it short)."""
        self._listeners.append(listener)

    def add(self, vm: Vm) -> None:
        """Claim `vm.vm_id`; `exist` if it is taken (a create in flight counts)."""
        with self._lock:
            if vm.vm_id in self._vms:
                raise VdsmError(Code.EXIST, f"VM {vm.vm_id} already exists")
            self._vms[vm.vm_id] = vm
            vm.listeners = self._listeners

    def get(self, vm_id: object) -> Vm:
        with self._lock:
            # vmIds are kept in uuid's canonical lower case.
            vm = self._vms.get(vm_id.lower()) if isinstance(vm_id, str) else None
        if vm is None:
            raise VdsmError(Code.NO_VM, f"no VM with vmId {vm_id!r}")
        return vm

    def find(self, vm_id: str) -> Vm | None:
        with self._lock:
            return self._vms.get(vm_id)

    def remove(self, vm: Vm) -> None:
        with self._lock:
            if self._vms.get(vm.vm_id) is vm:
                del self._vms[vm.vm_id]
            vm.removed = True

    def all(self) -> list[Vm]:
        with self._lock:
            return list(self._vms.values())
