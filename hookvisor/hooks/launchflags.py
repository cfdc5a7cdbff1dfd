"""Launch flags a before_vm_start hook may ask for (e.g. start paused).

Same format as VDSM: one file per VM holding the flags as a decimal integer
(libvirt's VIR_DOMAIN_START_PAUSED is 1). The hooking module writes it through
`dump_vm_launch_flags_to_file`; the agent reads it after before_vm_start and
clears it once the VM started.

The directory is the hook user's (the runner makes it so): whatever is in it
may be a symlink or a FIFO planted by a hook, so the agent reads without
following links, only regular files, a few bytes at most, and writes through
a new file renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

START_PAUSED = 1  # libvirt.VIR_DOMAIN_START_PAUSED, without importing libvirt
_MAX_BYTES = 64  # a decimal integer


def flags_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "launchflags"


def flags_path(run_dir: Path, vm_id: str) -> Path:
    # The VM id becomes a file name: nothing in it may leave the directory.
    if not vm_id or "/" in vm_id or vm_id in (".", "..") or "\0" in vm_id:
        raise ValueError(f"vm id {vm_id!r} cannot name a launch-flags file")
    return flags_dir(run_dir) / vm_id


def read_flags(run_dir: Path, vm_id: str) -> int:
    """The flags a hook left for this VM; 0 if none (or unreadable, or not a
    regular file)."""
    try:
        fd = os.open(flags_path(run_dir, vm_id),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
            return 0
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        text = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(text) > _MAX_BYTES:
        return 0
    try:
        return int(text.strip() or b"0")
    except ValueError:
        return 0


def write_flags(run_dir: Path, vm_id: str, flags: int) -> None:
    path = flags_path(run_dir, vm_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp: O_EXCL | O_NOFOLLOW, so a name a hook planted is never written through.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.write(fd, str(int(flags)).encode())
        # Readable by the hook user (hooking's load_vm_launch_flags_from_file);
        # the directory keeps everyone else out.
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def clear_flags(run_dir: Path, vm_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        flags_path(run_dir, vm_id).unlink()
