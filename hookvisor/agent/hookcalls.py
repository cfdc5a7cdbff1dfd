"""The one way the agent runs an event's hooks, whatever the event.

What differs between events (payload, may modify, may veto) is in the hook
engine's catalogue; here a veto becomes `hookError` and every script's stderr
reaches the log under the script's name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from hookvisor.agent.vm import Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.runner import ChainResult

log = logging.getLogger("hookvisor.hooks")


class HookSetupError(VdsmError):
    """A chain could not even start (its data file in the run dir could not be written)."""


def describe_os_error(e: OSError) -> str:
    """'Read-only file system: /run/hookvisor/x': the cause and the path, no errno noise."""
    reason = e.strerror or str(e)
    return f"{reason}: {e.filename}" if e.filename else reason

# The events this agent runs (getVdsCapabilities reports them).
SUPPORTED_EVENTS = (
    "before_vdsm_start",
    "after_vdsm_stop",
    "before_vm_start",
    "after_vm_start",
    "before_device_create",
    "after_device_create",
    "before_vm_pause",
    "after_vm_pause",
    "before_vm_cont",
    "after_vm_cont",
    "before_vm_destroy",
    "after_vm_destroy",
    "before_device_destroy",
    "after_device_destroy",
    "before_get_caps",
    "after_get_caps",
    "before_get_stats",
    "after_get_stats",
    "before_get_vm_stats",
    "after_get_vm_stats",
    "before_get_all_vm_stats",
    "after_get_all_vm_stats",
    "before_network_setup",
    "after_network_setup",
    "after_network_setup_fail",
)


class Runner(Protocol):
    """What the agent needs of hookvisor.hooks.runner.HookRunner."""

    # Hook run records that could not be written, and the last cause (getVdsStats).
    record_failures: int
    last_record_error: str

    def run(
        self,
        event: str,
        data: str = "",
        vm_id: str | None = None,
        vm_props: Mapping[str, object] | None = None,
        device_props: Mapping[str, object] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ChainResult: ...

    def installed(self) -> dict[str, dict[str, dict[str, str]]]: ...

    def scripts(self, event: str) -> Sequence[object]: ...


class HookCalls:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def wanted(self, event: str) -> bool:
        """Whether `event` has scripts now; without any, its payload need not be built."""
        try:
            return bool(self.runner.scripts(event))
        except OSError:
            return True  # an unreadable hook dir: the runner fails (and records) the chain

    def run(
        self,
        event: str,
        data: str = "",
        vm: Vm | None = None,
        device_props: Mapping[str, str] | None = None,
        vm_id: str | None = None,
    ) -> str:
        """Run `event`; its final data (the input for events that may not modify).

        Raises VdsmError(hookError) when a vetoing event's chain failed.
        """
        if not self.wanted(event):
            # What a chain of no scripts gives back, without a chain: nothing runs,
            # nothing is recorded, and no chain id or result is made per event.
            return data
        try:
            result = self.runner.run(
                event,
                data,
                vm_id=vm.vm_id if vm is not None else vm_id,
                vm_props=vm.vm_props if vm is not None else None,
                device_props=device_props,
            )
        except OSError as e:
            log.error("%s: cannot run its hooks: %s", event, describe_os_error(e))
            raise HookSetupError(Code.HOOK_ERROR, f"{event}: cannot run its hooks: "
                                 f"{describe_os_error(e)}") from None
        self._log(result)
        if result.vetoed:
            raise VdsmError(Code.HOOK_ERROR, result.message())
        return result.data

    def run_json(self, event: str, obj: Any, vm: Vm | None = None,
                 vm_id: str | None = None) -> Any:
        """Run a JSON event; the hooks' final JSON, or `obj` if they left none that parses."""
        if not self.wanted(event):
            return obj  # no script: spare the dump of a report that may hold 1,000 VMs
        sent = json.dumps(obj)
        text = self.run(event, sent, vm=vm, vm_id=vm_id)
        if text == sent:
            return obj  # no hook, or none changed it: skip the parse
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            log.warning("%s: hooks left JSON that does not parse; result unchanged", event)
            return obj

    @staticmethod
    def _log(result: ChainResult) -> None:
        for run in result.runs:
            # Failures are logged by the engine with their stderr; the rest here.
            if not run.failed and run.stderr.strip():
                for line in run.stderr.strip().splitlines():
                    log.info("hook %s/%s: %s", run.event, run.script, line)
        for problem in result.refused:
            log.warning("%s: %s", result.event.name, problem)
