"""What the lifecycle verbs work with, bundled so each verb is a plain function."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from hookvisor.agent.hookcalls import HookCalls
from hookvisor.agent.registry import VmRegistry
from hookvisor.agent.waits import DeviceRemovals
from hookvisor.config import Settings
from hookvisor.errors import Code, VdsmError
from hookvisor.virt.host import Host, HostError

T = TypeVar("T")


def host_failure(e: HostError, code: Code, message: str, *, no_vm: bool = False) -> VdsmError:
    """libvirt's failure as the verb's error `code`, but unavail when libvirtd is gone (the
    connection went between the gate and the call): the client may retry that one. With
    `no_vm`, a domain libvirt no longer has answers noVM (VDSM's code for those verbs)."""
    return VdsmError(Code.NO_VM if no_vm and e.no_domain else
                     Code.UNAVAIL if e.disconnected else code, f"{message}: {e}")


def host_call(call: Callable[[], T], code: Code, message: str, *, no_vm: bool = False) -> T:
    """`call()` (one libvirt call), its HostError raised as host_failure's VdsmError."""
    try:
        return call()
    except HostError as e:
        raise host_failure(e, code, message, no_vm=no_vm) from None


class PropertyChecker(Protocol):
    """What the agent needs of hookvisor.props.registry.PropertyRegistry."""

    def check(
        self,
        vm: Mapping[str, object] | None = None,
        devices: Iterable[tuple[str, Mapping[str, object]]] = (),
        networks: Iterable[Mapping[str, object]] = (),
        version: str | None = None,
    ) -> None: ...

    def definitions(self, version: str | None = None) -> dict[str, dict[str, object]]: ...


@dataclass(frozen=True)
class Context:
    host: Host
    registry: VmRegistry
    hooks: HookCalls
    props: PropertyChecker
    # Where hooks leave launch flags (hookvisor.hooks.launchflags).
    run_dir: Path
    # What a client may ask (storage_dirs, allow_client_qemu_args, bounds).
    settings: Settings = field(default_factory=Settings)
    # Hot-unplugs waiting for their guest (fed by libvirt's DEVICE_REMOVED events).
    removals: DeviceRemovals = field(default_factory=DeviceRemovals)
