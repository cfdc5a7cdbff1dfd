"""The warm executor for Python hooks: a pre-started, pre-warmed interpreter.

Starting `python3` and importing minidom is most of a Python hook's time; it is
the same every time. A zygote (zygote_child/hookvisor_zygote.py) is that
interpreter started once, as the hook user, from a clean fd table, with the
modules hooks use imported and warmed. Per hook the runner sends it the
script's path, argv[0] and environment with the hook's stdin/stdout/stderr
(SCM_RIGHTS); it creates a process that is the *agent's* child
(clone(CLONE_PARENT)), in its own process group, which runs the script as
`python3 path` would. The runner then treats that pid exactly as one it
spawned cold: same pidfd wait, timeout, group kill, reaping, records.
The zygote clones the next hook's process ahead (a spare, warmed up while the
current hook runs); the spares it announces and no hook took are reaped here.

Which scripts go warm: a shebang naming the interpreter directly
(`#!/usr/bin/python3`) or through env (`#!/usr/bin/env python3`, resolved on
the hook's PATH), without interpreter options; not when the manifest says
`warm = false`, not when the setting `warm_hooks` is off. A zygote that dies or
misbehaves costs nothing but speed: the hook runs cold, the log says so once,
a new zygote is started on a later hook (with a back-off if starting fails).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import re
import select
import socket
import stat
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from hookvisor.hooks.identity import HookUser, can_reach

log = logging.getLogger(__name__)

# Run by the hook's interpreter (not the agent's), stdlib only; not among the
# helpers, which are on every hook's PYTHONPATH.
CHILD_SCRIPT = Path(__file__).resolve().parent / "zygote_child" / "hookvisor_zygote.py"
# Architectures whose clone(2) the zygote knows.
SUPPORTED = platform.machine() in ("x86_64", "aarch64")
# Start-up (imports and the warm-up parse) on a loaded 2-core host.
START_TIMEOUT = 30.0
# From a request to the child's "ready": a clone and a few system calls.
REPLY_TIMEOUT = 10.0
# A request beyond this (a huge environment) runs cold.
REQUEST_MAX = 1 << 20
# At most this many zygotes (interpreter x user x start-up environment).
MAX_ZYGOTES = 4
RETRY_MIN, RETRY_MAX = 1.0, 60.0

_PYTHON_NAME = re.compile(rb"python3(\.\d+)?")
# What an interpreter reads at start-up (or at the import of what the zygote
# imports): a hook whose values differ from the zygote's cannot be its child.
_STARTUP_PREFIXES = ("PYTHON", "LC_")
_STARTUP_NAMES = ("LANG", "LANGUAGE", "HOME", "TZ")


class WarmUnavailable(Exception):
    """The warm path cannot run this hook now; run it cold."""


class NotWarmable(WarmUnavailable):
    """This hook cannot go warm (the zygote is fine): run it cold."""


@dataclass(frozen=True)
class Key:
    """What a zygote's children inherit from its start."""

    interpreter: str
    uid: int | None
    env: tuple[tuple[str, str], ...]
    cwd: str


def startup_env(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(
        (k, v) for k, v in env.items()
        if k.startswith(_STARTUP_PREFIXES) or k in _STARTUP_NAMES
    ))


@dataclass(frozen=True)
class Shebang:
    interpreter: bytes
    arg: bytes | None
    line: bytes = b""  # the whole first line, as read


def read_shebang(path: str) -> Shebang | None:
    """The script's `#!` line as the kernel splits it (interpreter, one optional
    argument); None if there is none or it is longer than the kernel reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line, newline, _ = head[2:].partition(b"\n")
    if not newline or b"\r" in line or b"\0" in line:
        return None
    first = b"#!" + line
    line = line.strip(b" \t")
    interp, _, rest = line.replace(b"\t", b" ").partition(b" ")
    rest = rest.strip(b" ")
    return Shebang(interp, rest or None, first) if interp else None


def _executable_by(path: str, user: HookUser | None) -> bool:
    """Whether `user` (None: this process) may execute `path` (mode bits, as
    execvp(3) finds out by trying: a directory it cannot search is skipped)."""
    if user is None:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not can_reach(Path(path).parent, user):
        return False
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in user.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def which(name: str, path_var: str | None, user: HookUser | None = None) -> str | None:
    """What execvp(3) (as env(1) uses it), run as `user`, finds for `name`."""
    search = path_var if path_var is not None else "/bin:/usr/bin"
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if _executable_by(candidate, user):
            return candidate
    return None


def warm_target(shebang: Shebang | None, env: dict[str, str],
                user: HookUser | None = None) -> tuple[str, str] | None:
    """(interpreter path, argv[0]) if a zygote can run the script; None: cold."""
    if shebang is None or not shebang.interpreter.startswith(b"/"):
        return None
    interp = os.fsdecode(shebang.interpreter)
    if shebang.arg is None:
        if not _PYTHON_NAME.fullmatch(os.path.basename(shebang.interpreter)):
            return None
        return (interp, interp) if _executable_by(interp, user) else None
    if os.path.basename(interp) != "env" or not _PYTHON_NAME.fullmatch(shebang.arg):
        return None  # interpreter options (-u, -S, -E ...): cold
    name = os.fsdecode(shebang.arg)
    found = which(name, env.get("PATH"), user)
    if found is None or not os.path.isabs(found):
        return None
    return found, name


class Zygote:
    """One running zygote and the socket to it."""

    def __init__(self, key: Key, user: HookUser | None) -> None:
        self.key = key
        self.user = user
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ids: dict[str, object] = {}
        if user is not None:
            ids = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        try:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                [key.interpreter, str(CHILD_SCRIPT), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(key.env),
                close_fds=True, restore_signals=True, process_group=0, **ids,
            )
        except (OSError, subprocess.SubprocessError) as e:
            ours.close()
            raise WarmUnavailable(f"cannot start {key.interpreter}: {e}") from None
        finally:
            theirs.close()
        self.sock = ours
        # Serialises requests: what the zygote announces (spares) is read in order.
        self._lock = threading.Lock()
        # Spares the zygote announced and no request was given to: our
        # children (clone(CLONE_PARENT)), ours to reap.
        self.spares: set[int] = set()
        # A Zygote dropped without close() (a runner nobody closed) still
        # leaves no process and no zombie behind.
        self._finalizer = weakref.finalize(self, _end, self.proc, ours, self.spares)
        try:
            hello = self._recv(ours, START_TIMEOUT)
        except WarmUnavailable:
            self.close()
            raise
        if not hello.startswith(b"H"):
            self.close()
            what = hello[1:].decode("utf-8", "replace") if hello else "exited"
            raise WarmUnavailable(f"{key.interpreter} could not warm up: {what}")

    @staticmethod
    def _recv(sock: socket.socket, timeout: float) -> bytes:
        """One message; b"" at end of file; WarmUnavailable past `timeout`."""
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            raise WarmUnavailable(f"no answer in {timeout:g}s")
        try:
            return sock.recv(4096)
        except OSError as e:
            raise WarmUnavailable(f"cannot read its answer: {e}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spare_pids(self) -> list[int]:
        """Its spares no hook has taken (tests, diagnostics)."""
        with self._lock:
            _announcements(self.sock, self.spares)
            return sorted(self.spares)

    def close(self) -> None:
        with self._lock:
            self._finalizer()

    def spawn(self, path: str, argv0: str, umask: int, shebang: bytes, env_list: list[bytes],
              stdin: int, stdout: int, stderr: int) -> int:
        """The pid of the hook's process, our child, ready to run the script.

        OSError as spawn() raises it if the script cannot be executed;
        WarmUnavailable if the zygote could not start it (nothing of the
        script ran: run it cold).
        """
        payload = b"\0".join([os.fsencode(path), os.fsencode(argv0), b"%o" % umask, shebang,
                              *env_list])
        if len(payload) > REQUEST_MAX:
            raise NotWarmable("request too large")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours:
            pid: int | None = None
            deadline = time.monotonic() + REPLY_TIMEOUT
            # Held until the child is named: a spare is ours to reap unless a
            # request went to it, which only the order of reading tells.
            locked = self._lock.acquire(timeout=REPLY_TIMEOUT)
            if not locked:
                theirs.close()
                raise WarmUnavailable("busy: no earlier request answered")
            try:
                try:
                    socket.send_fds(self.sock, [payload], [theirs.fileno(), stdin, stdout, stderr])
                except OSError as e:
                    raise WarmUnavailable(f"cannot send it a request: {e}") from None
                finally:
                    theirs.close()
                while True:
                    msg = self._recv(ours, max(deadline - time.monotonic(), 0.0))
                    kind, body = msg[:1], msg[1:]
                    try:
                        if kind in (b"R", b"X", b"N", b"P") and locked:
                            # The first word naming the child (a spare's "R"
                            # may come before the zygote's "P"): it was
                            # announced before this request was read, so the
                            # announcement is in the buffer now.
                            _announcements(self.sock, self.spares,
                                           taken=int(body.partition(b":")[0]))
                            self._lock.release()
                            locked = False
                        if kind == b"R":
                            return int(body)
                        if kind == b"P":
                            pid = int(body)
                        elif kind == b"X":
                            child, _, err = body.partition(b":")
                            _reap(int(child))
                            raise OSError(int(err), os.strerror(int(err)))
                        elif kind == b"N":
                            _reap(int(body))
                            pid = None  # reaped: its pid may be anyone's now
                            raise NotWarmable("the script changed meanwhile")
                        elif kind == b"E":
                            raise WarmUnavailable(f"clone failed: {os.strerror(int(body))}")
                        elif msg:
                            raise WarmUnavailable(f"unexpected answer {msg[:40]!r}")
                        else:
                            break  # end of file: the zygote (or the child) died
                    except ValueError:
                        raise WarmUnavailable(f"unexpected answer {msg[:40]!r}") from None
            except WarmUnavailable:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                    _reap(pid)
                raise
            finally:
                if locked:
                    self._lock.release()
            if pid is not None:
                _reap(pid)
                raise WarmUnavailable("its child died before it ran the script")
            raise WarmUnavailable("it closed the request unanswered")


def _announcements(sock: socket.socket, spares: set[int], taken: int | None = None) -> None:
    """Read what a zygote said unasked ("S<pid>": a new spare), forget `taken`
    and reap the spares that died unused (a hook, running as the same user,
    may kill one)."""
    while True:
        try:
            msg = sock.recv(64, socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: nothing more now
            break
        if not msg:
            break
        if msg[:1] == b"S" and msg[1:].isdigit():
            spares.add(int(msg[1:]))
    if taken is not None:
        spares.discard(taken)
    for pid in list(spares):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            spares.discard(pid)


def _end(proc: subprocess.Popen[bytes], sock: socket.socket, spares: set[int]) -> None:
    """Stop a zygote and its spares and reap them all."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    # Dead now: everything it announced is in the socket's buffer.
    _announcements(sock, spares)
    sock.close()
    for pid in spares:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        _reap(pid)
    spares.clear()


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask() would, for
    every thread, for a moment)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class WarmPool:
    """The runner's zygotes, started on first use, restarted after a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygotes: dict[Key, Zygote] = {}
        # Per key: consecutive failures and when a new start may be tried.
        self._retry: dict[Key, tuple[int, float]] = {}
        self._closed = False
        self.spawned = 0  # hooks started warm (tests, diagnostics)

    def _get(self, key: Key, user: HookUser | None) -> Zygote:
        with self._lock:
            if self._closed:
                raise WarmUnavailable("closed")
            z = self._zygotes.get(key)
            if z is not None:
                if z.alive():
                    return z
                self._failed_locked(key, z, "it died")
            failures, when = self._retry.get(key, (0, 0.0))
            if time.monotonic() < when:
                raise WarmUnavailable("restart backing off")
            if len(self._zygotes) >= MAX_ZYGOTES:
                raise WarmUnavailable("too many zygotes")
            try:
                z = Zygote(key, user)
            except WarmUnavailable as e:
                self._note_failure(key, failures, str(e))
                raise
            self._zygotes[key] = z
            return z

    def _note_failure(self, key: Key, failures: int, why: str) -> None:
        if failures == 0:
            # Once per run of failures; hooks keep running, cold.
            log.warning("warm executor %s (uid %s): %s; Python hooks run cold until it "
                        "is restarted", key.interpreter, key.uid, why)
        delay = min(RETRY_MIN * 2 ** failures, RETRY_MAX)
        self._retry[key] = (failures + 1, time.monotonic() + delay)

    def _failed_locked(self, key: Key, z: Zygote, why: str) -> None:
        if self._zygotes.get(key) is z:
            del self._zygotes[key]
            failures, _ = self._retry.get(key, (0, 0.0))
            self._note_failure(key, failures, why)
        z.close()

    def spawn(self, key: Key, user: HookUser | None, path: str, argv0: str, umask: int,
              shebang: bytes, env_list: list[bytes], stdin: int, stdout: int,
              stderr: int) -> int:
        z = self._get(key, user)
        try:
            pid = z.spawn(path, argv0, umask, shebang, env_list, stdin, stdout, stderr)
        except NotWarmable:
            raise
        except WarmUnavailable as e:
            with self._lock:
                self._failed_locked(key, z, str(e))
            raise
        except OSError as e:
            if e.errno is None or e.errno == errno.EPIPE:
                with self._lock:
                    self._failed_locked(key, z, str(e))
                raise WarmUnavailable(str(e)) from None
            raise
        with self._lock:
            self._retry.pop(key, None)
            self.spawned += 1
        return pid

    def prestart(self, key: Key, user: HookUser | None) -> None:
        """Start the zygote for `key` now if none runs (failures logged, as on use)."""
        with contextlib.suppress(WarmUnavailable):
            self._get(key, user)

    def pids(self) -> list[int]:
        """The running zygotes' pids (tests, diagnostics)."""
        with self._lock:
            return [z.proc.pid for z in self._zygotes.values()]

    def spare_pids(self) -> list[int]:
        """The spares the zygotes announced and no hook has taken (tests,
        diagnostics)."""
        with self._lock:
            zygotes = list(self._zygotes.values())
        return sorted(pid for z in zygotes for pid in z.spare_pids())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for z in zygotes:
            z.close()
