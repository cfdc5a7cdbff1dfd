"""Starting one hook script and capturing its output, capped while it is read.

A script runs as the leader of its own process group, stdin /dev/null, stdout
and stderr to pipes that the runner reads as the script writes: past the cap
the rest is read and dropped, never held, and the script never sees a full
pipe or EPIPE while it is our child. Exit is seen on a pidfd, not on the
pipes' end of file, so a background child left holding stdout (`sleep 600 &`)
does not hold the chain: its pipes go to one drainer thread that reads and
drops until the last writer is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from hookvisor.hooks.identity import HookUser

_CHUNK = 1 << 16
# A background child may write forever: after the leader's exit, read at most
# this much before handing its pipe to the drainer.
_FINAL_DRAIN = 1 << 20

# _posixsubprocess.fork_exec takes the same 23 arguments from 3.11 to 3.13;
# elsewhere Popen does the same work at a little more cost.
_FORK_EXEC = (3, 11) <= sys.version_info[:2] < (3, 14)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def encode_env(env: dict[str, str]) -> list[bytes]:
    return [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]


def spawn(path: str, env: dict[str, str], env_list: list[bytes] | None, stdin: int,
          stdout: int, stderr: int, user: HookUser | None) -> int:
    """Start `path` as the leader of a new process group; its pid. OSError if it
    cannot be executed.

    As the agent (user None): posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)),
    the cheapest start there is. As the hook user: posix_spawn cannot change
    credentials, so fork+exec through CPython's own child code (setgroups,
    setregid, setreuid, then exec; exec errors come back on a pipe), measured
    cheaper than posix_spawn of a wrapper such as setpriv (one more exec).
    Everything Python opens is close-on-exec (PEP 446), but a descriptor the
    agent inherited or a library opened may not be: as the hook user every
    descriptor beyond 0-2 is closed, so that none of the agent's reaches a hook.
    """
    if user is None:
        return os.posix_spawn(
            path,
            [path],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
            ],
            setpgroup=0,
            # Python ignores SIGPIPE (and a thread may block signals); a hook must
            # start with the defaults a shell script expects, as Popen's
            # restore_signals gives.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM),
            setsigmask=(),
        )
    if not _FORK_EXEC:
        proc = subprocess.Popen(
            [path], executable=path, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
            close_fds=True, restore_signals=True, process_group=0,
            user=user.uid, group=user.gid, extra_groups=list(user.groups),
        )
        proc.returncode = 0  # reaped by _Child, not by Popen
        return proc.pid
    import _posixsubprocess

    # Typeshed's stub says str/Callable where None is what subprocess passes.
    fork_exec: Any = _posixsubprocess.fork_exec

    errpipe_read, errpipe_write = os.pipe2(os.O_CLOEXEC)
    # The child dup2s onto 0-2: its error pipe must not be one of them.
    low: list[int] = []
    while errpipe_write < 3:
        low.append(errpipe_write)
        errpipe_write = os.dup(errpipe_write)
    for fd in low:
        os.close(fd)
    bpath = os.fsencode(path)
    try:
        pid: int = fork_exec(
            [bpath], [bpath], True, (errpipe_write,), None,
            env_list if env_list is not None else encode_env(env),
            stdin, -1, -1, stdout, -1, stderr, errpipe_read, errpipe_write,
            True, False, 0,  # restore_signals, no setsid, process group = own pid
            user.gid, list(user.groups), user.uid, -1, None, True,
        )
    finally:
        os.close(errpipe_write)
    # Empty once exec succeeded (close-on-exec). The child writes its error in
    # pieces ("OSError:", the errno, ":"): read to the end, as subprocess does.
    failure = b""
    try:
        while len(failure) <= 50_000:
            part = os.read(errpipe_read, 50_000)
            if not part:
                break
            failure += part
    finally:
        os.close(errpipe_read)
    if not failure:
        return pid
    os.waitpid(pid, 0)
    # subprocess's format: "ExceptionName:hex errno:message".
    parts = failure.split(b":", 2)
    err = int(parts[1], 16) if len(parts) == 3 and parts[1] else 0
    text = os.strerror(err) if err else parts[-1].decode("utf-8", "replace")
    raise OSError(err, text)


class Stream:
    """One pipe of a script: read as it comes, kept up to `cap` bytes."""

    __slots__ = ("cap", "cut", "data", "eof", "fd")

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.cut = False
        self.eof = False
        self.cap = cap

    def read_some(self) -> int:
        """One read: how many bytes came (0: nothing now, or end of file)."""
        try:
            chunk = os.read(self.fd, _CHUNK)
        except BlockingIOError:
            return 0
        if not chunk:
            self.eof = True
            return 0
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.cut = True
        return len(chunk)

    def drain(self, bound: int = _FINAL_DRAIN) -> None:
        got = 0
        while not self.eof and got < bound:
            n = self.read_some()
            if not n:
                return
            got += n

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def open_streams(cap: int) -> tuple[Stream, Stream, int, int]:
    """(stdout, stderr, stdout write end, stderr write end)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    # Only our ends: the script's write ends stay blocking, as a shell expects.
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return Stream(out_r, cap), Stream(err_r, cap), out_w, err_w


def close_streams(streams: tuple[Stream, ...]) -> None:
    """Done with the script: a pipe some leftover still holds goes to the drainer."""
    for s in streams:
        if s.fd < 0:
            continue
        s.drain()
        if s.eof:
            os.close(s.fd)
        else:
            DRAINER.add(s.fd)
        s.fd = -1


class _Drainer:
    """One thread that reads and drops what background leftovers of hooks write,
    so that they neither block on a full pipe nor die of SIGPIPE; at most
    `limit` pipes (past that the oldest is closed: those writers see EPIPE)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    def add(self, fd: int) -> None:
        with self._lock:
            self._pending.append(fd)
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                self._thread = threading.Thread(target=self._loop, name="hook-drain",
                                                daemon=True)
                self._thread.start()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        fds: list[int] = []  # oldest first; only this thread closes them
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd != self._wake_r and fd not in fds:
                    continue  # closed above, in this same round
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    with self._lock:
                        new, self._pending = self._pending, []
                    for n in new:
                        fds.append(n)
                        poller.register(n, select.POLLIN)
                    while len(fds) > self.limit:
                        old = fds.pop(0)
                        poller.unregister(old)
                        os.close(old)
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    poller.unregister(fd)
                    fds.remove(fd)
                    os.close(fd)


DRAINER = _Drainer()


class Child:
    """One script's process; exit seen on a pidfd so that it wakes us at once,
    its output read meanwhile."""

    def __init__(self, pid: int, streams: tuple[Stream, ...] = ()) -> None:
        self.pid = pid
        self.streams = streams
        self.status: int | None = None
        self.pidfd: int | None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def _exited_nowait(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def wait_exit(self, timeout: float) -> bool:
        """Read output until the process exited (True; not yet reaped when a
        pidfd is used) or `timeout` passed (False)."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        by_fd = {}
        for s in self.streams:
            if s.fd >= 0 and not s.eof:
                poller.register(s.fd, select.POLLIN)
                by_fd[s.fd] = s
        if self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        delay = 0.0005
        while True:
            if self.pidfd is None and self._exited_nowait():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait = remaining if self.pidfd is not None else min(remaining, delay)
            delay = min(delay * 2, 0.05)
            for fd, _ in poller.poll(max(1, int(wait * 1000 + 0.999))):
                if fd == self.pidfd:
                    return True
                stream = by_fd[fd]
                stream.read_some()
                if stream.eof:
                    poller.unregister(fd)

    def reap(self) -> int:
        """The exit code, negative for a signal (as subprocess reports it)."""
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return os.waitstatus_to_exitcode(self.status)

    def stop(self, grace: float) -> None:
        """SIGTERM to the whole group, grace (output still read), SIGKILL to the group."""
        _killpg(self.pid, signal.SIGTERM)
        self.wait_exit(grace)
        # The leader is not reaped yet, so its pgid cannot have been reused.
        _killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        _killpg(self.pid, signal.SIGKILL)
        self.reap()
