"""HookRunner: runs one chain of hook scripts for one event -> ChainResult.

One runner for every event of the catalogue. Per chain: one data file (0600, in
the run dir, always removed), one environment. Per script: its own process
group, stdout/stderr to anonymous files (not pipes, so a background child left
behind cannot hold the chain), a timeout enforced with SIGTERM to the group,
a grace period, then SIGKILL. Records are written once, at the end of the chain.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import select
import signal
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hookvisor.hooks import validation
from hookvisor.hooks.catalogue import Event, Payload, get_event
from hookvisor.hooks.discovery import ChecksumCache, Script, installed, list_scripts
from hookvisor.hooks.environment import build_environment
from hookvisor.hooks.launchflags import flags_dir
from hookvisor.hooks.manifest import Manifest, ManifestCache, ManifestError
from hookvisor.hooks.records import FAILED_OUTCOMES, RunRecord, RunRecords

if TYPE_CHECKING:
    from hookvisor.config import Settings

log = logging.getLogger(__name__)

OUTPUT_CAP = 64 * 1024
TEMP_PREFIX = "hook-"


@dataclass(frozen=True)
class RunnerConfig:
    hooks_dir: Path
    run_dir: Path
    default_timeout: float = 60.0
    event_timeouts: Mapping[str, float] = field(default_factory=dict)
    # Per script, keyed "event/script"; a script's manifest timeout wins over it.
    script_timeouts: Mapping[str, float] = field(default_factory=dict)
    grace: float = 2.0
    # Where hooks leave launch flags; default <run_dir>/launchflags.
    launchflags_dir: Path | None = None
    output_cap: int = OUTPUT_CAP
    # Kill what a script left running in its process group once it exits.
    # Off by default: VDSM hooks may legitimately start a helper in the background.
    kill_leftovers: bool = False
    # The agent's environment; None means os.environ at the time of the run.
    base_env: Mapping[str, str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerConfig:
        """From the agent's settings; an `event_timeouts` key "event/script" is per script."""
        per_event = {k: v for k, v in settings.event_timeouts.items() if "/" not in k}
        per_script = {k: v for k, v in settings.event_timeouts.items() if "/" in k}
        return cls(
            hooks_dir=settings.hooks_dir,
            run_dir=settings.run_dir,
            default_timeout=settings.hook_timeout,
            event_timeouts=per_event,
            script_timeouts=per_script,
            grace=settings.hook_grace,
        )

    def timeout_for(self, event: str, script: str, manifest: Manifest | None) -> float:
        if manifest is not None and manifest.timeout is not None:
            return manifest.timeout
        key = f"{event}/{script}"
        if key in self.script_timeouts:
            return float(self.script_timeouts[key])
        return float(self.event_timeouts.get(event, self.default_timeout))


@dataclass
class ScriptRun:
    script: str
    event: str
    checksum: str
    outcome: str  # ok, failed, timeout, invalid-output, skipped
    rc: int | None
    duration: float
    started: float
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    diff: str = ""
    message: str = ""  # what went wrong beyond rc and stderr (signal, invalid output, ...)
    ignored: bool = False  # manifest on_failure = "ignore": a failure is recorded, never vetoes
    stops_chain: bool = False
    pgid: int | None = None

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    def describe(self) -> str:
        if self.outcome == "timeout":
            what = "timed out"
        elif self.outcome == "invalid-output":
            what = "left invalid output"
        elif self.rc is not None:
            what = f"failed rc={self.rc}"
        else:
            what = "failed"
        detail = "; ".join(p for p in (self.message, self.stderr.strip()) if p)
        text = f"hook {self.script} ({self.event}) {what}"
        return f"{text}: {detail}" if detail else text


@dataclass
class ChainResult:
    chain_id: str
    event: Event
    vm_id: str | None
    data: str
    runs: list[ScriptRun]
    vetoed: bool
    # Custom properties the environment refused (second line of defence).
    refused: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[ScriptRun]:
        return [r for r in self.runs if r.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    def message(self) -> str:
        failures = [r for r in self.failures if not r.ignored] or self.failures
        return "; ".join(r.describe() for r in failures)


def _anon_file(directory: str) -> int:
    """A read-write file with no name: nothing to remove, whatever happens.

    A memfd first: no file system is involved, so creating and dropping one
    costs no journal work (an unlinked ext4 inode does).
    """
    try:
        return os.memfd_create("hook-output", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        pass
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    os.unlink(path)
    return fd


def _read_capped(fd: int, cap: int) -> tuple[str, bool, bool]:
    """(text, cut, anything written) of a script's output file."""
    size = os.fstat(fd).st_size
    if size == 0:
        return "", False, False
    data = os.pread(fd, min(size, cap + 1), 0)
    cut = len(data) > cap
    return data[:cap].decode("utf-8", errors="replace"), cut, bool(data)


def _read_data(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # Sized reads: os.read(fd, n) allocates n bytes up front.
        chunks = []
        while chunk := os.read(fd, os.fstat(fd).st_size + 1):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_data(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _diff(before: bytes, after: bytes | None, script: str) -> str:
    if after is None:
        return ""
    old = before.decode("utf-8", errors="replace").splitlines(keepends=True)
    new = after.decode("utf-8", errors="replace").splitlines(keepends=True)
    lines = difflib.unified_diff(old, new, f"before {script}", f"after {script}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether anything is left in the process group once its leader was reaped."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_has_live_member(pgid: int) -> bool:
    """Like _group_alive, but zombies do not count: they are dead, only not yet
    reaped by init (which, in some containers, reaps only now and then)."""
    if not _group_alive(pgid):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _wait_group_gone(pgid: int, bound: float) -> None:
    deadline = time.monotonic() + bound
    delay = 0.0005
    while _group_has_live_member(pgid) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


class _Outputs:
    """The stdout/stderr files of a chain's scripts, and /dev/null for stdin.

    Reused from script to script (truncated), except after a script that left
    something running in its group: that leftover still holds the files and
    would write into the next script's record, so the next script gets new ones.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.out = -1
        self.err = -1
        self.leftovers = False
        self.dirty = False  # the last script wrote something: truncate first

    def fresh(self) -> tuple[int, int]:
        if self.leftovers or self.out < 0:
            self._close_files()
            self.out = _anon_file(self.run_dir)
            self.err = _anon_file(self.run_dir)
            self.leftovers = False
        elif self.dirty:
            for fd in (self.out, self.err):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
        self.dirty = False
        return self.out, self.err

    def _close_files(self) -> None:
        for fd in (self.out, self.err):
            if fd >= 0:
                os.close(fd)
        self.out = self.err = -1

    def close(self) -> None:
        self._close_files()
        os.close(self.devnull)


def _spawn(path: str, env: dict[str, str], stdin: int, stdout: int, stderr: int) -> int:
    """Start `path` as the leader of a new process group; its pid.

    posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)) rather than Popen: no
    Python-side pipe and pre-exec setup per script. Inherited descriptors need no
    closing: everything Python opens is close-on-exec (PEP 446).
    """
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


class _Child:
    """One script's process; waits on a pidfd so that exit wakes us at once."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.pidfd: int | None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def wait_exit(self, timeout: float) -> bool:
        """True once the process exited (not yet reaped when a pidfd is used)."""
        deadline = time.monotonic() + timeout
        if self.pidfd is None:
            delay = 0.0005
            while self.status is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if poller.poll(max(1, int(remaining * 1000 + 0.999))):
                return True

    def reap(self) -> int:
        """The exit code, negative for a signal (as subprocess reports it)."""
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return os.waitstatus_to_exitcode(self.status)

    def stop(self, grace: float) -> None:
        """SIGTERM to the whole group, grace, SIGKILL to the whole group."""
        _killpg(self.pid, signal.SIGTERM)
        self.wait_exit(grace)
        # The leader is not reaped yet, so its pgid cannot have been reused.
        _killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        _killpg(self.pid, signal.SIGKILL)
        self.reap()


class HookRunner:
    def __init__(self, config: RunnerConfig, records: RunRecords | None = None) -> None:
        self.config = config
        self.records = records
        self._checksums = ChecksumCache()
        self._manifests = ManifestCache()
        self._run_dir_ready = False

    def installed(self) -> dict[str, dict[str, dict[str, str]]]:
        return installed(self.config.hooks_dir, self._checksums)

    def scripts(self, event: str) -> list[Script]:
        return list_scripts(self.config.hooks_dir, event)

    def _prepare_run_dir(self) -> str:
        run_dir = str(self.config.run_dir)
        if not self._run_dir_ready:
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
            self._run_dir_ready = True
        return run_dir

    def cleanup_stale(self) -> int:
        """Remove data files left by a runner process that died (SIGKILL, power loss)."""
        removed = 0
        try:
            names = os.listdir(self.config.run_dir)
        except OSError:
            return 0
        for name in names:
            parts = name.split("-")
            if not name.startswith(TEMP_PREFIX) or len(parts) < 3 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                os.unlink(os.path.join(self.config.run_dir, name))
                removed += 1
            except OSError:
                pass
        return removed

    def run(
        self,
        event: str,
        data: str = "",
        vm_id: str | None = None,
        vm_props: Mapping[str, object] | None = None,
        device_props: Mapping[str, object] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ChainResult:
        """Run the event's chain. Never raises for a hook's misbehaviour.

        ValueError for an unknown or path-like event name, or an extra
        variable the event does not take.
        """
        ev = get_event(event)
        for name in extra_env or {}:
            if name not in ev.extras:
                raise ValueError(f"event {ev.name} takes no extra variable {name!r}")
        chain_id = uuid.uuid4().hex
        try:
            scripts = list_scripts(self.config.hooks_dir, event)
        except OSError as e:
            # An unreadable hook dir must not mean "no hooks": a vetoing hook
            # would be skipped without a word. It fails the chain instead.
            where = os.path.join(self.config.hooks_dir, event)
            run = ScriptRun(f"({event})", event, "", "failed", None, 0.0, time.time(),
                            message=f"cannot list {where}: {e.strerror}", stops_chain=True)
            log.warning("%s", run.describe())
            self._record(chain_id, ev, vm_id, [run])
            return ChainResult(chain_id, ev, vm_id, data, [run], ev.vetoes)
        if not scripts:
            return ChainResult(chain_id, ev, vm_id, data, [], False)
        runs: list[ScriptRun] = []
        run_dir = self._prepare_run_dir()
        suffix = ".json" if ev.payload is Payload.JSON else ".xml"
        fd, path = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=run_dir
        )
        refused: list[str] = []
        try:
            initial = data.encode("utf-8")
            with os.fdopen(fd, "wb") as f:
                f.write(initial)
            launch_dir = self.config.launchflags_dir or flags_dir(self.config.run_dir)
            environment = build_environment(
                ev,
                base_env=os.environ if self.config.base_env is None else self.config.base_env,
                vm_id=vm_id,
                vm_props=vm_props,
                device_props=device_props,
                extra_env=extra_env,
                data_path=path,
                launchflags_dir=str(launch_dir),
            )
            refused = environment.refused
            props = set(vm_props or {}) | set(device_props or {})
            final = self._chain(ev, scripts, path, initial, environment.env, props, runs)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._record(chain_id, ev, vm_id, runs)
        vetoed = ev.vetoes and any(r.failed and not r.ignored for r in runs)
        out = final.decode("utf-8") if ev.modifies else data
        return ChainResult(chain_id, ev, vm_id, out, runs, vetoed, refused)

    def _chain(
        self,
        ev: Event,
        scripts: list[Script],
        path: str,
        initial: bytes,
        env: dict[str, str],
        props: set[str],
        runs: list[ScriptRun],
    ) -> bytes:
        current = initial
        # Parsed only once a script changed the data: no-op chains never parse.
        base: validation.Baseline | None = None
        base_ready = False
        run_dir = self._prepare_run_dir()
        fds = _Outputs(run_dir)
        try:
            for script in scripts:
                run, after = self._run_one(ev, script, path, current, env, props, fds)
                if after != current:
                    if ev.modifies and not run.failed:
                        if not base_ready:
                            base, base_ready = validation.baseline(ev.payload, initial), True
                        problem = validation.check(ev.payload, base, after)
                        if problem is not None:
                            run.outcome = "invalid-output"
                            run.stops_chain = True
                            run.message = f"{problem}; its edits were discarded"
                    if run.failed or after is None:
                        # The next script sees the data as it was before this one.
                        _write_data(path, current)
                    else:
                        current = after
                runs.append(run)
                if run.failed:
                    log.warning("%s", run.describe())
                if run.stops_chain:
                    break
        finally:
            fds.close()
        return current

    def _run_one(
        self,
        ev: Event,
        script: Script,
        path: str,
        current: bytes,
        env: dict[str, str],
        props: set[str],
        fds: _Outputs,
    ) -> tuple[ScriptRun, bytes | None]:
        started = time.time()
        checksum = self._checksums.checksum(script)

        def result(outcome: str, message: str, stops: bool) -> tuple[ScriptRun, bytes | None]:
            run = ScriptRun(script.name, ev.name, checksum, outcome, None, 0.0, started,
                            message=message, stops_chain=stops)
            if manifest_ignore:
                run.ignored = True
            return run, current

        manifest_ignore = False
        manifest: Manifest | None = None
        if script.manifest is not None:
            try:
                manifest = self._manifests.load(script.manifest)
            except ManifestError as e:
                return result("failed", str(e), True)
        if manifest is not None and not manifest.wants(props):
            wanted = ", ".join(manifest.when_property or ())
            return result("skipped", f"no custom property among: {wanted}", False)
        timeout = self.config.timeout_for(ev.name, script.name, manifest)
        ignored = manifest_ignore = manifest is not None and manifest.on_failure == "ignore"

        out_fd, err_fd = fds.fresh()
        t0 = time.monotonic()
        try:
            pid = _spawn(str(script.path), env, fds.devnull, out_fd, err_fd)
        except OSError as e:
            return result("failed", f"cannot execute {script.path}: {e.strerror}", True)
        child = _Child(pid)
        timed_out = False
        try:
            if not child.wait_exit(timeout):
                timed_out = True
                child.stop(self.config.grace)
            elif self.config.kill_leftovers:
                _killpg(pid, signal.SIGKILL)
            rc = child.reap()
            if timed_out or self.config.kill_leftovers:
                # SIGKILL is delivered asynchronously: return once the group is gone.
                _wait_group_gone(pid, max(self.config.grace, 1.0))
            fds.leftovers = _group_alive(pid)
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit): take the script with us.
            child.kill()
            raise
        duration = time.monotonic() - t0
        stdout, out_cut, out_used = _read_capped(out_fd, self.config.output_cap)
        stderr, err_cut, err_used = _read_capped(err_fd, self.config.output_cap)
        fds.dirty = out_used or err_used

        after = _read_data(path)
        message = ""
        if timed_out:
            outcome, stops = "timeout", True
            message = f"killed after the {timeout:g}s timeout"
            rc_out: int | None = None
        else:
            rc_out = rc
            if rc == 0:
                outcome, stops = "ok", False
            elif rc < 0:
                outcome, stops = "failed", True
                message = f"killed by signal {_signal_name(-rc)}"
            elif rc == 2:
                outcome, stops = "failed", True
            else:
                outcome, stops = "failed", False
                if rc > 2:
                    message = f"reserved return code {rc} (>2), counted as a failure"
        if after is None:
            message = "; ".join(m for m in (message, "removed the data file") if m)
        run = ScriptRun(
            script.name, ev.name, checksum, outcome, rc_out, duration, started,
            stdout, stderr, out_cut, err_cut,
            diff=_diff(current, after, script.name) if after != current else "",
            message=message, ignored=ignored,
            stops_chain=stops, pgid=pid,
        )
        return run, after

    def _record(self, chain_id: str, ev: Event, vm_id: str | None, runs: list[ScriptRun]) -> None:
        if self.records is None or not runs:
            return
        try:
            self.records.add(
                RunRecord(
                    chain_id, r.started, ev.name, vm_id, r.script, r.checksum, r.outcome, r.rc,
                    r.duration, r.stdout, r.stdout_truncated, r.stderr, r.stderr_truncated,
                    r.diff, r.message,
                )
                for r in runs
            )
        except (sqlite3.Error, OSError) as e:
            # Losing a record must never change what the operation does.
            log.warning("could not record hook runs of %s: %s", ev.name, e)
