"""Where a client may make the agent read or write files: under Settings.storage_dirs.

A stopgap until the trust-boundary work (agent/policy.py) offers its own check:
a path is taken only if absolute and, with symlinks resolved, inside one of
the allowed directories.
"""

from __future__ import annotations

import os
from pathlib import Path

from hookvisor.errors import Code, VdsmError


def allowed_path(value: object, what: str, dirs: tuple[Path, ...], code: Code) -> Path:
    """`value` as a resolved Path under one of `dirs`; VdsmError(code) naming `what` if not."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise VdsmError(code, f"{what}: expected an absolute file path, got {value!r}")
    # The file itself may not exist yet (a save target): resolve what does.
    path = Path(os.path.realpath(value))
    for base in dirs:
        root = Path(os.path.realpath(base))
        if path != root and path.is_relative_to(root):
            return path
    shown = ", ".join(str(d) for d in dirs) or "none configured"
    raise VdsmError(code, f"{what}: {value} is not under an allowed storage directory "
                    f"(storage_dirs: {shown})")
