"""Waiting for a guest to release a device: libvirt's DEVICE_REMOVED event.

A detach call returns once QEMU has asked the guest; the device is gone only
when the event comes (SPEC §5). The waiter is registered before the detach
call, so an event that beats the call's return is not lost. A destroy of the
VM, or its domain stopping, wakes the waiter at once.
"""

from __future__ import annotations

import threading
import time


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.removed = False


class DeviceRemovals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str], _Waiter] = {}

    def expect(self, uuid: str, alias: str) -> None:
        """Start listening for `alias` of domain `uuid` (before the detach call)."""
        with self._lock:
            self._waiting[(uuid, alias)] = _Waiter()

    def removed(self, uuid: str, alias: str) -> None:
        """libvirt's DEVICE_REMOVED (on its event thread)."""
        with self._lock:
            waiter = self._waiting.get((uuid, alias))
        if waiter is not None:
            waiter.removed = True
            waiter.event.set()

    def wake(self, uuid: str) -> None:
        """Stop every wait on domain `uuid` (destroy, the domain stopped)."""
        with self._lock:
            waiters = [w for (u, _a), w in self._waiting.items() if u == uuid]
        for waiter in waiters:
            waiter.event.set()

    def wait(self, uuid: str, alias: str, deadline: float) -> bool:
        """Whether `alias` was removed before `deadline` (time.monotonic) or a wake."""
        with self._lock:
            waiter = self._waiting.get((uuid, alias))
        if waiter is None:
            raise RuntimeError(f"wait for {alias} of {uuid} without expect()")
        try:
            waiter.event.wait(max(0.0, deadline - time.monotonic()))
            return waiter.removed
        finally:
            with self._lock:
                self._waiting.pop((uuid, alias), None)

    def cancel(self, uuid: str, alias: str) -> None:
        with self._lock:
            self._waiting.pop((uuid, alias), None)
