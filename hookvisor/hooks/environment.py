"""The environment a hook script gets (SPEC §1).

The custom-property registry refuses reserved names before a value is stored;
this module refuses them again when the environment is built, so that no path
into the runner (an old stored VM, a bug upstream, a hand-written call) can let
a VM owner choose PATH, LD_PRELOAD or the data file of a hook.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hookvisor.hooks.catalogue import Event
from hookvisor.names import RESERVED_PREFIXES, reserved_reason

HELPERS_DIR = Path(__file__).resolve().parent / "helpers"
LAUNCHFLAGS_VAR = "_hook_launchflags_dir"
CLEAN_ENV_NAMES = ("PATH", "HOME", "LANG")
_CLEAN_DEFAULTS = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


@dataclass
class Environment:
    env: dict[str, str]
    # Properties refused here, with the reason; the runner reports them.
    refused: list[str] = field(default_factory=list)


def _props(props: Mapping[str, object], kind: str, refused: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in props.items():
        reason = reserved_reason(name) if isinstance(name, str) else "not a string"
        text = value if isinstance(value, str) else str(value)
        if reason is None and "\0" in text:
            reason = "value contains a NUL byte"
        if reason is not None:
            refused.append(f"{kind} property {name!r} refused: {reason}")
            continue
        out[name] = text
    return out


def build_environment(
    event: Event,
    *,
    base_env: Mapping[str, str],
    vm_id: str | None = None,
    vm_props: Mapping[str, object] | None = None,
    device_props: Mapping[str, object] | None = None,
    extra_env: Mapping[str, str] | None = None,
    data_path: str | None = None,
    launchflags_dir: str | None = None,
) -> Environment:
    """The whole environment of the event's scripts; computed once per chain."""
    refused: list[str] = []
    if event.clean_env:
        env = {k: base_env.get(k, _CLEAN_DEFAULTS[k]) for k in CLEAN_ENV_NAMES}
    else:
        # Stale hook variables inherited by the agent must not leak into a run.
        env = {
            k: v
            for k, v in base_env.items()
            if not k.startswith(RESERVED_PREFIXES[1]) and k not in ("vmId", "FROM_SNAPSHOT")
        }
    if event.open_extras:
        # The caller's params first: a VM property of the same name wins (VDSM order).
        env.update(_props(extra_env or {}, "parameter", refused))
    # Device first, then VM: where both name a property, the VM's wins (VDSM).
    env.update(_props(device_props or {}, "device", refused))
    env.update(_props(vm_props or {}, "VM", refused))
    for name, value in (extra_env or {}).items() if not event.open_extras else ():
        if name not in event.extras:
            raise ValueError(f"event {event.name} takes no extra variable {name!r}")
        env[name] = value
    if vm_id is not None:
        env["vmId"] = vm_id
    if data_path is not None:
        env[event.payload.env_var] = data_path
    if launchflags_dir is not None:
        env[LAUNCHFLAGS_VAR] = launchflags_dir
    old = base_env.get("PYTHONPATH", "") if not event.clean_env else ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (old, str(HELPERS_DIR)) if p)
    return Environment(env, refused)
