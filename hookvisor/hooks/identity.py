"""Who a hook runs as (SPEC §1 "Who runs a hook").

An agent running as root runs every hook as the hook user (setting
`hook_user`), with that user's uid, primary gid and supplementary groups, and
HOME/USER/LOGNAME; only before_vdsm_start and after_vdsm_stop run as root. An
agent that is not root cannot switch and runs hooks as itself.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

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


def check(name: str) -> str | None:
    """For the agent's start-up: None if hooks can run as `name` (or need not
    switch, when the agent is not root), else one line saying why not."""
    if not can_switch():
        return None
    try:
        lookup(name)
    except HookUserError as e:
        return str(e)
    return None


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
