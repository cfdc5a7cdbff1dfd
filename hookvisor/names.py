"""Names a hook's environment may not take from outside.

Shared by the custom-property registry (first line of defence, at definition
and at use) and the hook runner (second line, when it builds the environment).
"""

from __future__ import annotations

import re

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Overriding any of these would let a VM owner change how the hook runs
# (which binary, which libraries) or what data it reads.
RESERVED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "IFS",
        "PYTHONPATH",
        "PYTHONHOME",
        "vmId",
        "FROM_SNAPSHOT",
    }
)
RESERVED_PREFIXES = ("LD_", "_hook_")


def is_valid_env_name(name: str) -> bool:
    return bool(ENV_NAME_RE.fullmatch(name))


def reserved_reason(name: str) -> str | None:
    """Why `name` may not be a custom property, or None if it may."""
    if not is_valid_env_name(name):
        return "not a valid environment variable name (^[A-Za-z_][A-Za-z0-9_]*$)"
    if name in RESERVED_NAMES:
        return f"reserved name {name!r}"
    for prefix in RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"reserved prefix {prefix!r}"
    return None
