"""Checks `serve` makes before it says anything is ready."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hookvisor.config import Settings
from hookvisor.hooks import trust


def unwritable_dir(settings: Settings) -> str | None:
    """The first of state dir and run dir the agent cannot write, as a one-line reason.

    Really tried (a file created, written and removed): permission bits say
    nothing of a read-only mount, a full disk or an immutable directory.
    """
    for what, path in (("state dir", settings.state_dir), ("run dir", settings.run_dir)):
        problem = _try_write(path)
        if problem is not None:
            return f"{what} {path} is not writable: {problem}"
        # What is in them is read and acted on as root (the run dir's hook
        # process-group files name groups the next start kills): nobody else
        # may plant anything there.
        try:
            others = trust.problem(str(path), os.stat(path))
        except OSError as e:
            return f"{what} {path}: {e.strerror or e}"
        if others is not None:
            return f"{what} {others}"
    # A socket elsewhere than the run dir: whoever can write its directory could
    # bind the name first (local clients would talk to them).
    socket_dir = settings.socket_path().parent
    if socket_dir != settings.run_dir and socket_dir.exists():
        others = trust.problem(str(socket_dir), os.stat(socket_dir))
        if others is not None:
            return f"socket dir {others}"
    return None


def _try_write(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    probe = path / f".hookvisor-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        return f"{e.strerror or e} ({probe})"
    try:
        probe.unlink()
    except OSError as e:
        return f"cannot remove {probe}: {e.strerror or e}"
    return None
