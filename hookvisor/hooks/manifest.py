"""Optional per-script manifest: `NN_name.toml` beside the script.

A manifest is not executable, so discovery never runs it. It lets an operator
bound one script's time, decide whether its failure vetoes, and run it only
for VMs that carry one of the named custom properties (skipped without a fork).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

OnFailure = Literal["veto", "ignore"]
_KEYS = ("timeout", "on_failure", "when_property", "warm")


class ManifestError(Exception):
    """A manifest that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    timeout: float | None = None
    on_failure: OnFailure = "veto"
    when_property: tuple[str, ...] | None = None
    # False: never through the warm executor (a script that relies on a fresh
    # interpreter's start-up, say); hookvisor.hooks.zygote.
    warm: bool = True

    def wants(self, props: set[str]) -> bool:
        """Whether the script should run for a VM/device with these property names."""
        return self.when_property is None or bool(props.intersection(self.when_property))

    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"file": self.path.name}
        if self.timeout is not None:
            out["timeout"] = int(self.timeout) if self.timeout.is_integer() else self.timeout
        out["on_failure"] = self.on_failure
        if self.when_property is not None:
            out["when_property"] = list(self.when_property)
        if not self.warm:
            out["warm"] = False
        return out


MANIFEST_SUFFIX = ".toml"


def manifest_names(script: str) -> list[str]:
    """`50_numa.toml` for `50_numa`; for `50_numa.py` also `50_numa.py.toml`."""
    names = [script + MANIFEST_SUFFIX]
    stem, dot, _ = script.rpartition(".")
    if dot and stem:
        names.insert(0, stem + MANIFEST_SUFFIX)
    return names


def parse_manifest(path: Path, text: str) -> Manifest:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"manifest {path}: not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ManifestError(
            f"manifest {path}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(_KEYS)})"
        )
    timeout: float | None = None
    if "timeout" in raw:
        value = raw["timeout"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ManifestError(
                f"manifest {path}: timeout must be a positive number of seconds, got {value!r}"
            )
        timeout = float(value)
    on_failure = raw.get("on_failure", "veto")
    if on_failure not in ("veto", "ignore"):
        raise ManifestError(
            f"manifest {path}: on_failure must be \"veto\" or \"ignore\", got {on_failure!r}"
        )
    when: tuple[str, ...] | None = None
    if "when_property" in raw:
        value = raw["when_property"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value
        ):
            raise ManifestError(
                f"manifest {path}: when_property must be a non-empty list of property "
                f"names, got {value!r}"
            )
        when = tuple(value)
    warm = raw.get("warm", True)
    if not isinstance(warm, bool):
        raise ManifestError(f"manifest {path}: warm must be true or false, got {warm!r}")
    return Manifest(path, timeout, on_failure, when, warm)


class ManifestCache:
    """Parses a manifest again only when its file changed (inode, size, mtime)."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}

    def load(self, path: Path) -> Manifest:
        """The manifest at `path`; ManifestError if it is bad or unreadable."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise ManifestError(f"manifest {path}: cannot read: {e.strerror}") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"manifest {path}: cannot read: {e}") from None
        manifest = parse_manifest(path, text)
        self._cache[path] = (key, manifest)
        return manifest
