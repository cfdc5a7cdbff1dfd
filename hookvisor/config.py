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
    # Python hooks through a pre-started interpreter (docs/hooks.md "The warm path").
    warm_hooks: bool = True

    # --- trust boundary (SPEC §1 "Who runs a hook", §4 "Transport and trust") ---
    # Plain TCP instead of mutual TLS on `listen`; only when the operator says so.
    insecure: bool = False
    # PKI laid out as VDSM's /etc/pki/vdsm: CA certificate, host certificate and key.
    pki_dir: Path = Path("/etc/pki/hookvisor")
    ca_cert: Path | None = None  # default <pki_dir>/certs/cacert.pem
    host_cert: Path | None = None  # default <pki_dir>/certs/hostcert.pem
    host_key: Path | None = None  # default <pki_dir>/keys/hostkey.pem
    # Local clients: a Unix socket (default <run_dir>/hookvisor.sock) whose peer
    # must be root, the agent's own user, or a member of `api_group`.
    unix_socket: Path | None = None
    api_group: str = "hookvisor-api"
    # Hooks run as this user (root only for before_vdsm_start/after_vdsm_stop).
    hook_user: str = "hookvisor"
    # Files a client-supplied domain may name (disks, serial/console logs, kernel...).
    storage_dirs: tuple[Path, ...] = (Path("/var/lib/hookvisor/images"),)
    # Let a client's own `xml` carry <qemu:commandline> (hooks always may).
    allow_client_qemu_args: bool = False

    # --- bounds on what a client or a hook can send ---
    max_request_bytes: int = 8 * 1024 * 1024
    max_reply_bytes: int = 32 * 1024 * 1024
    max_nesting: int = 32
    max_string_bytes: int = 4 * 1024 * 1024
    max_int_digits: int = 20
    max_vm_name: int = 255
    hook_output_cap: int = 64 * 1024
    hook_diff_cap: int = 256 * 1024
    hook_runs_page: int = 500  # most records one getHookRuns reply carries
    hook_runs_reply_bytes: int = 4 * 1024 * 1024

    # --- connections and shutdown ---
    workers: int = 16
    max_connections: int = 1024
    read_timeout: float = 30.0  # a request started must arrive whole within this
    idle_timeout: float = 120.0  # a keep-alive connection with no request is closed
    shutdown_timeout: float = 30.0
    # libvirt reconnect backoff, seconds: first try, then doubling up to the max.
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0

    # --- host networking (setupNetworks) ---
    # The network namespace the agent configures, by name (`ip netns`); "" is the
    # host's own. Tests and benchmarks point it at a namespace of their own.
    net_netns: str = ""
    # A second setupNetworks waits this long for the first, then is refused.
    net_lock_wait: float = 30.0

    # --- live VM operations (issue 8) ---
    # How long a hot-unplug waits for the guest to release the device (libvirt's
    # DEVICE_REMOVED event) before it answers hotunplugNic/hotunplugDisk.
    unplug_timeout: float = 10.0

    # --- operator experience (issue 12) ---
    # Where `hookvisor vm|net|hooks` find the agent: HOST:PORT (mutual TLS), or
    # "" for the Unix socket (socket_path()). HOOKVISOR_AGENT or --agent.
    agent: str = ""
    # Bytes of a chain's input data kept with its records (for `hooks replay`);
    # a bigger input is kept cut and marked, and cannot be replayed exactly.
    hook_input_cap: int = 1024 * 1024
    # How many of the newest chains keep their input (the rest keep their runs only).
    hook_inputs_kept: int = 200

    # --- VDSM's other hook points (issue 13): what a params-built VM is made ready for ---
    # DIMM slots of <maxMemory> (hotplugMemory); 0: no memory hot-plug.
    memory_slots: int = 16
    # <maxMemory> in MiB; 0: four times memSize.
    max_memory_mib: int = 0
    # <vcpu current='smp'>max</vcpu> (setNumberOfCpus); at most the host's limit.
    max_vcpus_per_vm: int = 16
    # The console device: "vnc" (loopback, expired placeholder password until a
    # setTicket), "spice", or "none".
    graphics: str = "vnc"

    # --- live migration (issue 9) ---
    # The source aborts a libvirt migration running longer than this; the
    # destination forgets an incoming VM that has not arrived within it.
    migration_timeout: float = 600.0
    # The libvirt URI a peer migrates to (told in migrationCreate's reply); "":
    # libvirt_uri when it names a host, else qemu+tls://<this host's name>/system.
    migration_uri: str = ""
    # Where QEMU's memory stream goes (tcp://ADDRESS); "": migration_uri's host.
    migration_address: str = ""

    def pki_paths(self) -> tuple[Path, Path, Path]:
        """(CA certificate, host certificate, host key), defaults under pki_dir."""
        return (self.ca_cert or self.pki_dir / "certs" / "cacert.pem",
                self.host_cert or self.pki_dir / "certs" / "hostcert.pem",
                self.host_key or self.pki_dir / "keys" / "hostkey.pem")

    def socket_path(self) -> Path:
        return self.unix_socket or self.run_dir / "hookvisor.sock"


_PATH_FIELDS = {"hooks_dir", "state_dir", "run_dir", "pki_dir", "ca_cert", "host_cert",
                "host_key", "unix_socket"}
_ENV = {
    "state_dir": "HOOKVISOR_STATE_DIR",
    "run_dir": "HOOKVISOR_RUN_DIR",
    "hooks_dir": "HOOKVISOR_HOOKS_DIR",
    "libvirt_uri": "HOOKVISOR_LIBVIRT_URI",
    "pki_dir": "HOOKVISOR_PKI_DIR",
    "unix_socket": "HOOKVISOR_SOCKET",
    "agent": "HOOKVISOR_AGENT",
}


def _coerce(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = kinds[name]
    try:
        if name in _PATH_FIELDS:
            return Path(str(value))
        if name == "storage_dirs":
            if isinstance(value, str):
                value = [v for v in value.split(":") if v]
            if not isinstance(value, list | tuple):
                raise TypeError("expected a list of directories")
            return tuple(Path(str(v)) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise TypeError("expected true or false")
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
