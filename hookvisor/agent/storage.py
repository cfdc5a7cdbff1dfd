"""Where a client may make the agent read or write files: under Settings.storage_dirs.

The rule is the client policy's (agent/policy.py `inside`): absolute and, with
symlinks and `..` resolved, inside one of the allowed directories. This is its
form for single paths of the live operations (hibernation images, a hook's prepared disk).
"""

from __future__ import annotations

import os
from pathlib import Path

from hookvisor.agent.policy import inside
from hookvisor.errors import Code, VdsmError


def allowed_path(value: object, what: str, dirs: tuple[Path, ...], code: Code) -> Path:
    """`value` as a resolved Path under one of `dirs`; VdsmError(code) naming `what` if not."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise VdsmError(code, f"{what}: expected an absolute file path, got {value!r}")
    # The file itself may not exist yet (a save target): realpath resolves what does.
    roots = tuple(os.path.realpath(d) for d in dirs)
    if inside(value, roots) and os.path.realpath(value) not in roots:
        return Path(os.path.realpath(value))
    shown = ", ".join(str(d) for d in dirs) or "none configured"
    raise VdsmError(code, f"{what}: {value} is not under an allowed storage directory "
                    f"(storage_dirs: {shown})")
