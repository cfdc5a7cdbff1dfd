"""Who a hook runs as (SPEC §1 "Who runs a hook").

An agent running as root runs every hook as the hook user (setting
`hook_user`), with that user's uid, primary gid and supplementary groups, and
HOME/USER/LOGNAME; only before_vdsm_start and after_vdsm_stop run as root. An
agent that is not root cannot switch and runs hooks as itself.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FIX = "create it with `useradd --system hookvisor` (scripts/setup.sh does), or set hook_user"


class HookUserError(Exception):
    """The hook user does not exist: hooks cannot run as it."""


@dataclass(frozen=True)
class HookUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as initgroups(3) would set them
    home: str

    def env(self) -> dict[str, str]:
        """What a login as this user would set; the agent's values would be root's."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def lookup(name: str) -> HookUser:
    """The user `name` with its groups; HookUserError naming the fix if there is none."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise HookUserError(f"hook user {name!r} does not exist: {FIX}") from None
    if pw.pw_uid == 0:
        # A root hook user would make the whole trust boundary a no-op.
        raise HookUserError(f"hook user {name!r} is root: hooks must run unprivileged")
    groups = tuple(os.getgrouplist(name, pw.pw_gid))
    return HookUser(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir or "/")


def can_switch() -> bool:
    """Whether this process may run hooks as another user."""
    return os.geteuid() == 0


def can_reach(path: Path, user: HookUser) -> bool:
    """Whether `user` can search every directory down to `path` (mode bits only)."""
    for d in [*reversed(Path(path).parents), Path(path)]:
        try:
            st = os.stat(d)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def check(name: str, helpers: Path | None = None) -> str | None:
    """For the agent's start-up: None if hooks can run as `name` (or need not
    switch, when the agent is not root), else one line saying why not.

    Also warns (only) if the hook user cannot reach the `hooking` helper
    directory (an install under /root, say): Python hooks would not import it.
    """
    if not can_switch():
        return None
    try:
        user = lookup(name)
    except HookUserError as e:
        return str(e)
    if helpers is None:
        from hookvisor.hooks.environment import HELPERS_DIR

        helpers = HELPERS_DIR
    if not can_reach(helpers, user):
        log.warning("hook user %s cannot reach %s: Python hooks cannot import hooking "
                    "(install hookvisor where it can, e.g. not under /root)", name, helpers)
    return None


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
