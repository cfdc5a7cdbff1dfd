"""The process groups of running hooks, on disk, so that the next agent can kill
what a SIGKILLed one left running.

One file per chain in <run_dir>/hookgroups (root's, 0700): a header with the
agent's pid, start time and the boot id, then one line per script started
("pgid start uid script"), the start time being the leader's (field 22 of
/proc/PID/stat). The file goes once the chain ended and none of its groups is
left. A group is killed only if it is still the one recorded: same boot, the
leader alive with the same start time and uid, or (leader gone) members that
all started after it, one of them the recorded uid. So a reused pgid is never
killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GROUPS_DIR = "hookgroups"
_boot_id: str | None = None


def boot_id() -> str:
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = "-"
    return _boot_id


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, start time in clock ticks since boot) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        return fields[0].decode(), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@dataclass(frozen=True)
class Group:
    pgid: int
    start: int
    uid: int
    script: str

    def line(self) -> str:
        return f"{self.pgid} {self.start} {self.uid} {self.script}\n"


def _header() -> str:
    me = proc_stat(os.getpid())
    return f"agent {os.getpid()} {me[2] if me else 0} {boot_id()}\n"


class ChainGroups:
    """The groups of one chain's scripts, appended as they start."""

    def __init__(self, directory: Path, chain_id: str) -> None:
        self.path = os.path.join(directory, f"{os.getpid()}-{chain_id}")
        self.directory = directory
        self.groups: list[Group] = []
        self._fd = -1

    def add(self, pid: int, uid: int, script: str) -> None:
        stat = proc_stat(pid)
        group = Group(pid, stat[2] if stat else 0, uid, script.replace("\n", "?"))
        self.groups.append(group)
        if self._fd < 0:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                               | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            os.write(self._fd, _header().encode())
        os.write(self._fd, group.line().encode())

    def finish(self, alive: list[Group]) -> bool:
        """The chain ended: keep only the groups still `alive`; True if the file stays."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self.groups:
            return False
        if not alive:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return False
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(_header() + "".join(g.line() for g in alive))
        os.replace(tmp, self.path)
        self.groups = alive
        return True


def same_group(group: Group, boot: str) -> bool:
    """Whether `group` is still the recorded one (not a reused pgid)."""
    if boot != boot_id():
        return False
    leader = proc_stat(group.pgid)
    if leader is not None and leader[0] not in ("Z", "X"):
        return (leader[1] == group.pgid and leader[2] == group.start
                and proc_uid(group.pgid) == group.uid)
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st is not None and st[1] == group.pgid and st[0] not in ("Z", "X"):
            members.append((int(entry), st))
    return bool(members) and all(st[2] >= group.start for _, st in members) and any(
        proc_uid(pid) == group.uid for pid, _ in members)


def _agent_alive(pid: int, start: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[2] == start and stat[0] not in ("Z", "X")


def kill_stale(directory: Path) -> int:
    """Kill the groups that dead agents' chains left running and remove their
    files; how many groups were killed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    killed = 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                lines = f.read(1 << 20).decode("utf-8", "replace").splitlines()
            header = lines[0].split()
            agent_pid, agent_start, boot = int(header[1]), int(header[2]), header[3]
        except (OSError, IndexError, ValueError):
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        if agent_pid == os.getpid() or _agent_alive(agent_pid, agent_start):
            continue
        for line in lines[1:]:
            parts = line.split(" ", 3)
            try:
                group = Group(int(parts[0]), int(parts[1]), int(parts[2]),
                              parts[3] if len(parts) > 3 else "?")
            except (IndexError, ValueError):
                continue
            if same_group(group, boot):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group.pgid, signal.SIGKILL)
                    killed += 1
                    log.warning("killed process group %d of hook %s, left running by agent "
                                "%d that died", group.pgid, group.script, agent_pid)
        with contextlib.suppress(OSError):
            os.unlink(path)
    return killed
