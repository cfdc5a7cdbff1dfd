"""The one way the agent runs an event's hooks, whatever the event.

What differs between events (payload, may modify, may veto) is in the hook
engine's catalogue; here a veto becomes `hookError` and every script's stderr
reaches the log under the script's name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hookvisor.agent.vm import Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.catalogue import EVENTS, get_event
from hookvisor.hooks.runner import ChainResult

T = TypeVar("T")
# (device XML, that device's custom properties): the per-device events' inputs.
DeviceHooks = Sequence[tuple[str, Mapping[str, str]]]

log = logging.getLogger("hookvisor.hooks")


class HookSetupError(VdsmError):
    """A chain could not even start (its data file in the run dir could not be written)."""


def describe_os_error(e: OSError) -> str:
    """'Read-only file system: /run/hookvisor/x': the cause and the path, no errno noise."""
    reason = e.strerror or str(e)
    return f"{reason}: {e.filename}" if e.filename else reason

# Every event the agent fires, registered where it is used (Family, uses()):
# getVdsCapabilities reports this set, so it cannot drift from the code.
_USED: set[str] = set()


def uses(*events: str) -> tuple[str, ...]:
    """Declare events a module fires; a name not in the catalogue fails at import."""
    for event in events:
        get_event(event)
        _USED.add(event)
    return events


def supported_events() -> list[str]:
    """The events this agent fires, in the catalogue's order."""
    order = {name: i for i, name in enumerate(EVENTS)}
    return sorted(_USED, key=lambda e: order[e])


@dataclass(frozen=True)
class Family:
    """One hooked operation's events: before_<name>, after_<name>, maybe after_<name>_fail.

    Made with `family()`, which registers the events as used.
    """

    name: str
    fail: bool = False

    @property
    def before(self) -> str:
        return f"before_{self.name}"

    @property
    def after(self) -> str:
        return f"after_{self.name}"

    @property
    def after_fail(self) -> str:
        return f"after_{self.name}_fail"


def family(name: str, fail: bool = False) -> Family:
    fam = Family(name, fail)
    uses(fam.before, fam.after, *((fam.after_fail,) if fail else ()))
    return fam


uses("before_vdsm_start", "after_vdsm_stop")


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
        extra_env: Mapping[str, str] | None = None,
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
                extra_env=extra_env,
            )
        except OSError as e:
            log.error("%s: cannot run its hooks: %s", event, describe_os_error(e))
            raise HookSetupError(Code.HOOK_ERROR, f"{event}: cannot run its hooks: "
                                 f"{describe_os_error(e)}") from None
        self._log(result)
        if result.vetoed:
            raise VdsmError(Code.HOOK_ERROR, result.message())
        return result.data

    def run_after(self, event: str, data: str, vm: Vm,
                  device_props: Mapping[str, str] | None = None,
                  extra_env: Mapping[str, str] | None = None) -> None:
        """An after_ event: whatever happens in it, the operation stands."""
        try:
            self.run(event, data, vm, device_props, extra_env=extra_env)
        except Exception:
            log.exception("%s for VM %s failed", event, vm.vm_id)

    def around(
        self,
        fam: Family,
        data: str,
        vm: Vm,
        action: Callable[[str], T],
        *,
        device_props: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        devices: DeviceHooks = (),
        device_fam: Family | None = None,
        after: Callable[[T], str] | None = None,
    ) -> T:
        """before_ (a veto raises hookError) -> action -> after_, or after_..._fail.

        `data` is the before_ event's payload; `action` gets the chain's final
        data (what a modifying event's hooks left, else `data`). `devices` run
        `device_fam`'s events after the before_ event and before the after_
        event (VDSM's order). `after(result)` is the after_ event's payload
        (default: what the action got). The action signals failure with
        VdsmError: the after_..._fail event (if the family has one) gets the
        action's input, and the error goes on to the client.
        """
        final = self.run(fam.before, data, vm, device_props, extra_env=extra_env)
        if device_fam is not None:
            for xml, props in devices:
                self.run(device_fam.before, xml, vm, props, extra_env=extra_env)
        try:
            result = action(final)
        except VdsmError:
            if fam.fail:
                self.run_after(fam.after_fail, final, vm, device_props, extra_env)
            raise
        if device_fam is not None:
            for xml, props in devices:
                self.run_after(device_fam.after, xml, vm, props, extra_env)
        payload = after(result) if after is not None else final
        self.run_after(fam.after, payload, vm, device_props, extra_env)
        return result

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
