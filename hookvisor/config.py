"""Agent settings: defaults, then the TOML config file, then environment, then flags.

One place decides where the state dir, run dir and hooks dir are, so that
`hookvisor serve`, `hookvisor config` and `hookvisor hooks history` agree.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = Path("/etc/hookvisor/hookvisor.toml")


class ConfigError(Exception):
    """A config file or option that cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    libvirt_uri: str = "test:///default"
    listen: str = "127.0.0.1:54321"
    hooks_dir: Path = Path("/usr/libexec/hookvisor/hooks")
    state_dir: Path = Path("/var/lib/hookvisor")
    run_dir: Path = Path("/run/hookvisor")
    cluster_version: str = "4.8"
    # "auto" picks by URI: test driver -> test, usable /dev/kvm -> kvm, else qemu.
    domain_type: str = "auto"
    hook_timeout: float = 60.0
    hook_grace: float = 2.0
    # Per-event timeouts, seconds: {"before_vm_start": 120}.
    event_timeouts: dict[str, float] = field(default_factory=dict)
    hook_history_limit: int = 10_000


_PATH_FIELDS = {"hooks_dir", "state_dir", "run_dir"}
_ENV = {
    "state_dir": "HOOKVISOR_STATE_DIR",
    "run_dir": "HOOKVISOR_RUN_DIR",
    "hooks_dir": "HOOKVISOR_HOOKS_DIR",
    "libvirt_uri": "HOOKVISOR_LIBVIRT_URI",
}


def _coerce(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = kinds[name]
    try:
        if name in _PATH_FIELDS:
            return Path(str(value))
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
        if name == "event_timeouts":
            if not isinstance(value, dict):
                raise TypeError("expected a table of event = seconds")
            return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting {name!r}: bad value {value!r}: {e}") from None
    return value


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Defaults < config file < HOOKVISOR_* environment < explicit overrides (flags).

    An explicitly named config file must exist; the default one may be absent.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file
    if path is None and env.get("HOOKVISOR_CONFIG"):
        path = Path(env["HOOKVISOR_CONFIG"])
    explicit = path is not None
    path = path or DEFAULT_CONFIG_FILE
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {path}: {e}") from None
        known = {f.name for f in fields(Settings)}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = _coerce(name, value)
    elif explicit:
        raise ConfigError(f"config file {path}: does not exist")
    for name, var in _ENV.items():
        if env.get(var):
            values[name] = _coerce(name, env[var])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    return replace(Settings(), **values)
