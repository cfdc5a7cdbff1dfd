"""The setups on disk: the one in force (running) and the one confirmed safe.

Both are JSON files in `<state_dir>/net/`, each written whole to a temporary
file, flushed to disk and renamed over the old one: a crash leaves either the
old file or the new one, never half of either.

At agent start, `restore_request` is what takes the host from the setup in
force back to the safe one: an unconfirmed setup (applied, never passed to
setSafeNetworkConfig) does not survive a restart, as in VDSM.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hookvisor.net.model import Config, Request, RequestError, config_from_dict

RUNNING = "running.json"
SAFE = "safe.json"


class StoreError(Exception):
    """A stored setup that cannot be read back (names the file and why)."""


class NetStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def running(self) -> Config:
        """The setup in force as last applied; empty if none was ever applied."""
        return self._read(RUNNING) or Config()

    def safe(self) -> Config | None:
        """The setup last confirmed; None if none ever was."""
        return self._read(SAFE)

    def save_running(self, config: Config) -> None:
        self._write(RUNNING, config.to_dict())

    def save_safe(self, config: Config) -> None:
        self._write(SAFE, config.to_dict())

    def _read(self, name: str) -> Config | None:
        path = self.directory / name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: cannot read: {e}") from e
        if not isinstance(data, dict):
            raise StoreError(f"{path}: not a setup (expected a JSON object)")
        try:
            return config_from_dict(data)
        except RequestError as e:
            raise StoreError(f"{path}: damaged setup: {e}") from e

    def _write(self, name: str, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename itself must reach the disk too.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def restore_request(running: Config, safe: Config) -> Request:
    """The request that turns `running` into `safe` (every safe network re-stated, so that
    one the kernel lost, after a reboot, is made again)."""
    return Request(
        networks=dict(safe.networks),
        bonds=dict(safe.bonds),
        remove_networks=frozenset(set(running.networks) - set(safe.networks)),
        remove_bonds=frozenset(set(running.bonds) - set(safe.bonds)),
    )
