"""Which hook files may run: none that anyone but root can change (SPEC §1).

A hook runs with privileges its author may not have (root for the vdsm
events, the hook user for the rest), so a script, its event directory and the
hooks directory must be writable by root only: owned by root (or by the
agent's own user when the agent is not root) and neither group- nor
other-writable. Otherwise a local user could plant code that later runs with
those privileges.
"""

from __future__ import annotations

import os
import stat


def allowed_owners() -> tuple[int, ...]:
    euid = os.geteuid()
    return (0,) if euid == 0 else (0, euid)


def problem(path: str, st: os.stat_result, owners: tuple[int, ...] | None = None) -> str | None:
    """Why `path` (whose stat is `st`) may not be trusted, with the fix; None if it may."""
    owners = owners if owners is not None else allowed_owners()
    why = []
    if st.st_uid not in owners:
        why.append(f"owned by uid {st.st_uid}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "group- and other-writable" if st.st_mode & stat.S_IWGRP and \
            st.st_mode & stat.S_IWOTH else \
            "group-writable" if st.st_mode & stat.S_IWGRP else "other-writable"
        why.append(f"{who} (mode {stat.S_IMODE(st.st_mode):04o})")
    if not why:
        return None
    return f"{path} is {' and '.join(why)}: refused; fix: chmod go-w {path}; chown root {path}"


def check_dir(path: str, owners: tuple[int, ...] | None = None) -> str | None:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot check {path}: {e.strerror}"
    return problem(path, st, owners)


def check_script(path: str, st: os.stat_result, is_link: bool,
                 owners: tuple[int, ...] | None = None) -> str | None:
    """The script itself (`st` follows symlinks) and, for a symlink, where it points."""
    if not is_link:
        return problem(path, st, owners)
    target = os.path.realpath(path)
    return problem(target, st, owners) or check_dir(os.path.dirname(target), owners)
