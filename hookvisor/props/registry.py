"""PropertyRegistry: what the agent and the CLI call.

Definitions live in the store as text; each check re-reads the text for the
cluster version (so `hookvisor config -s` takes effect at once, no restart,
unlike the engine) and uses the compiled form cached by text.

    reg = PropertyRegistry(state_dir / "properties.sqlite", cluster_version="4.8")
    reg.set("UserDefinedVMProperties", "memory=^[0-9]+$", version="4.8")
    reg.check_vm({"memory": "1024"})                  # raises PropertyError
    reg.check_device("interface", {"speed": "1000"})  # raises PropertyError
    reg.check(vm={...}, devices=[("interface", {...})])  # one request, all problems
    reg.definitions()  # {"vm": {...}, "device": {type: {...}}, "network": {...}}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hookvisor.props.checks import CompiledValue, check_values, compile_value
from hookvisor.props.errors import DefinitionError, PropertyError
from hookvisor.props.store import PropertyStore, StoredValue
from hookvisor.props.syntax import KEYS, Kind

__all__ = ["DefinitionError", "PropertyError", "PropertyRegistry", "version_sort_key"]

VM_KEY = "UserDefinedVMProperties"
DEVICE_KEY = "CustomDeviceProperties"
NETWORK_KEY = "UserDefinedNetworkCustomProperties"

DB_FILE_NAME = "properties.sqlite"


class PropertyRegistry:
    def __init__(self, db_path: Path | str, cluster_version: str) -> None:
        _check_version(cluster_version)
        self.cluster_version = cluster_version
        self.store = PropertyStore(db_path)

    # --- definitions -------------------------------------------------------

    def set(self, key: str, value: str, version: str | None = None) -> str:
        """Replace `key`'s whole value for `version` (default: the one served).

        Raises DefinitionError listing every problem; then nothing is stored.
        Returns the text stored (the canonical form of `value`).
        """
        version = self._version(version)
        if not isinstance(value, str):
            raise DefinitionError([f"{key}: value must be text, got {type(value).__name__}"])
        compiled = compile_value(key, value)
        self.store.set(key, version, compiled.text)
        return compiled.text

    def get(self, key: str, version: str | None = None) -> str:
        """The stored text, "" when the key has no value for the version."""
        if key not in KEYS:
            raise DefinitionError([f"unknown key {key!r}; known keys: {', '.join(KEYS)}"])
        return self.store.get(key, self._version(version)) or ""

    def stored(self, key: str | None = None) -> list[StoredValue]:
        """Every stored value (of `key`), versions in natural order."""
        values = self.store.all(key)
        return sorted(values, key=lambda v: (v.key, version_sort_key(v.version)))

    def definitions(self, version: str | None = None) -> dict[str, dict[str, object]]:
        """{"vm": {name: regex}, "device": {type: {name: regex}}, "network": {name: regex}}.

        A stored value that no longer passes the checks shows as empty.
        """
        texts = self.store.get_many(list(KEYS), self._version(version))
        out: dict[str, dict[str, object]] = {"vm": {}, "device": {}, "network": {}}
        for key, text in texts.items():
            try:
                compiled = compile_value(key, text)
            except DefinitionError:
                continue
            kind = KEYS[key].kind
            if kind is Kind.DEVICE:
                out["device"] = {t: {n: r.regex for n, r in rules.items()}
                                 for t, rules in compiled.devices.items()}
            else:
                out[kind.value] = {n: r.regex for n, r in compiled.props.items()}
        return out

    # --- use-time checks ---------------------------------------------------

    def check_vm(self, props: Mapping[str, object], version: str | None = None) -> None:
        self.check(vm=props, version=version)

    def check_device(
        self, device_type: str, props: Mapping[str, object], version: str | None = None
    ) -> None:
        self.check(devices=[(device_type, props)], version=version)

    def check_network(self, props: Mapping[str, object], version: str | None = None) -> None:
        self.check(networks=[props], version=version)

    def check(
        self,
        vm: Mapping[str, object] | None = None,
        devices: Iterable[tuple[str, Mapping[str, object]]] = (),
        networks: Iterable[Mapping[str, object]] = (),
        version: str | None = None,
    ) -> None:
        """Raise PropertyError with every problem of one request (VM, its devices, ...)."""
        problems = self.problems(vm, devices, networks, version)
        if problems:
            raise PropertyError(problems)

    def problems(
        self,
        vm: Mapping[str, object] | None = None,
        devices: Iterable[tuple[str, Mapping[str, object]]] = (),
        networks: Iterable[Mapping[str, object]] = (),
        version: str | None = None,
    ) -> list[str]:
        """What `check` would refuse, as a list; never raises for bad values."""
        version = self._version(version)
        devices = list(devices)
        networks = list(networks)
        problems: list[str] = []
        # One snapshot for the whole request: a concurrent `-s` cannot make
        # the VM checked against one definition and its devices another.
        texts = self.store.get_many(list(KEYS), version)
        compiled: dict[str, CompiledValue | None] = {}
        for key in KEYS:
            try:
                compiled[key] = compile_value(key, texts.get(key, ""))
            except DefinitionError as e:
                compiled[key] = None
                broken = f"stored {key} for cluster version {version} is invalid: {e}"
                if _uses(key, vm, devices, networks):
                    problems.append(broken)

        where = f"in cluster version {version}"
        vm_rules = compiled[VM_KEY]
        if vm and vm_rules is not None:
            problems += check_values(vm_rules.props, vm, "VM", f"{where} ({VM_KEY})")
        dev_rules = compiled[DEVICE_KEY]
        for device_type, props in devices:
            if not props or dev_rules is None:
                continue
            if not isinstance(device_type, str):
                problems.append(f"device type {device_type!r} is not a string")
                continue
            problems += check_values(
                dev_rules.devices.get(device_type, {}), props, f"{device_type} device",
                f"for {device_type} devices {where} ({DEVICE_KEY})",
            )
        net_rules = compiled[NETWORK_KEY]
        for props in networks:
            if props and net_rules is not None:
                problems += check_values(net_rules.props, props, "network",
                                         f"{where} ({NETWORK_KEY})")
        return problems

    def close(self) -> None:
        self.store.close()

    def _version(self, version: str | None) -> str:
        if version is None:
            return self.cluster_version
        _check_version(version)
        return version


def _uses(key: str, vm: object, devices: list[tuple[str, Mapping[str, object]]],
          networks: list[Mapping[str, object]]) -> bool:
    kind = KEYS[key].kind
    if kind is Kind.VM:
        return bool(vm)
    if kind is Kind.DEVICE:
        return any(props for _, props in devices)
    return any(networks)


def _check_version(version: object) -> None:
    if not isinstance(version, str) or not version or version.strip() != version:
        raise DefinitionError([f"cluster version {version!r}: must be non-empty text "
                               "without surrounding spaces"])


def version_sort_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """'4.10' after '4.9'; non-numeric parts sort after numbers, as text."""
    return tuple((0, int(p)) if p.isascii() and p.isdigit() else (1, p)
                 for p in re.split(r"[.\-_]", version))
