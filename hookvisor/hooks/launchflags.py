"""Launch flags a before_vm_start hook may ask for (e.g. start paused).

Same format as VDSM: one file per VM holding the flags as a decimal integer
(libvirt's VIR_DOMAIN_START_PAUSED is 1). The hooking module writes it through
`dump_vm_launch_flags_to_file`; the agent reads it after before_vm_start and
clears it once the VM started.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

START_PAUSED = 1  # libvirt.VIR_DOMAIN_START_PAUSED, without importing libvirt


def flags_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "launchflags"


def flags_path(run_dir: Path, vm_id: str) -> Path:
    # The VM id becomes a file name: nothing in it may leave the directory.
    if not vm_id or "/" in vm_id or vm_id in (".", "..") or "\0" in vm_id:
        raise ValueError(f"vm id {vm_id!r} cannot name a launch-flags file")
    return flags_dir(run_dir) / vm_id


def read_flags(run_dir: Path, vm_id: str) -> int:
    """The flags a hook left for this VM; 0 if none (or unreadable)."""
    try:
        text = flags_path(run_dir, vm_id).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


def write_flags(run_dir: Path, vm_id: str, flags: int) -> None:
    path = flags_path(run_dir, vm_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(str(int(flags)))
    os.replace(tmp, path)


def clear_flags(run_dir: Path, vm_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        flags_path(run_dir, vm_id).unlink()
