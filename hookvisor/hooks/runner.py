"""HookRunner: runs one chain of hook scripts for one event -> ChainResult.

One runner for every event of the catalogue. Per chain: one directory of the
hook user's in the run dir (0700, always removed) holding the data file (0600,
the hook user's), one environment. Per script: run as the hook user (an agent
running as root; the vdsm start/stop events as root), its own process group,
stdout/stderr read through pipes and capped while read (hookvisor.hooks.spawn),
a timeout enforced with SIGTERM to the group, a grace period, then SIGKILL; its
group noted on disk while it runs (hookvisor.hooks.groups). A script anyone
but root could change is refused. Records are written once, at the end of the
chain.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sqlite3
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hookvisor.hooks import diffs, groups, identity, validation, zygote
from hookvisor.hooks import spawn as spawn_mod
from hookvisor.hooks.catalogue import EVENTS, Event, Payload, get_event
from hookvisor.hooks.discovery import (
    ChecksumCache,
    ListingCache,
    Script,
    installed,
    list_scripts,
)
from hookvisor.hooks.environment import build_environment
from hookvisor.hooks.identity import HookUser, HookUserError
from hookvisor.hooks.launchflags import flags_dir
from hookvisor.hooks.manifest import Manifest, ManifestCache, ManifestError
from hookvisor.hooks.records import FAILED_OUTCOMES, ChainInput, RunRecord, RunRecords
from hookvisor.hooks.spawn import Child, Stream, close_streams, open_streams

if TYPE_CHECKING:
    from hookvisor.config import Settings

log = logging.getLogger(__name__)

OUTPUT_CAP = 64 * 1024
DIFF_CAP = 256 * 1024
# What a hook may leave as data: far above any sane domain XML, far below
# what would hurt the agent.
DATA_CAP = 64 * 1024 * 1024
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
    diff_cap: int = DIFF_CAP
    data_cap: int = DATA_CAP
    # Who hooks run as when the agent is root (None: as the agent, never switch).
    hook_user: str | None = "hookvisor"
    # Bytes of a chain's input kept with its records (for a replay).
    input_cap: int = 1024 * 1024
    # Python hooks through the warm executor (hookvisor.hooks.zygote).
    warm_hooks: bool = True

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
            output_cap=settings.hook_output_cap,
            diff_cap=settings.hook_diff_cap,
            hook_user=settings.hook_user,
            input_cap=settings.hook_input_cap,
            warm_hooks=settings.warm_hooks,
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
    diff: str = ""  # of the canonical forms (hookvisor.hooks.diffs.for_payload)
    message: str = ""  # what went wrong beyond rc and stderr (signal, invalid output, ...)
    ignored: bool = False  # manifest on_failure = "ignore": a failure is recorded, never vetoes
    stops_chain: bool = False
    pgid: int | None = None
    raw_diff: str = ""  # of the bytes, when it differs from `diff`

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


class BadData(Exception):
    """What a hook left in place of the data file cannot be read back safely."""


def _read_data(path: str, owner: int, cap: int) -> bytes | None:
    """The data file as a hook left it; None if it removed it.

    The hook user owns the chain's directory: what is there now may be a
    symlink, a FIFO, a hard link to someone else's file or something huge.
    Only a regular file of the expected owner, with one link, up to `cap`
    bytes, is read (BadData otherwise).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadData("replaced the data file with a symlink") from None
        raise BadData(f"left a data file that cannot be read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadData("replaced the data file with something not a regular file")
        if st.st_uid != owner or st.st_nlink != 1:
            raise BadData("replaced the data file with a file of another owner or a hard link")
        if st.st_size > cap:
            raise BadData(f"grew the data file beyond {cap} bytes")
        # Sized reads: os.read(fd, n) allocates n bytes up front.
        chunks = []
        total = 0
        while chunk := os.read(fd, min(max(st.st_size, 1 << 16), cap + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise BadData(f"grew the data file beyond {cap} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _create_data(directory: str, name: str, data: bytes, user: HookUser | None) -> str:
    """A new data file `name` in `directory` (replacing whatever the hook left there)."""
    fd, tmp = tempfile.mkstemp(prefix=".new-", dir=directory)  # O_EXCL | O_NOFOLLOW, 0600
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if user is not None:
            os.fchown(fd, user.uid, user.gid)
    finally:
        os.close(fd)
    path = os.path.join(directory, name)
    # rename replaces a planted symlink itself, never what it points to.
    os.replace(tmp, path)
    return path


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


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
        st = groups.proc_stat(int(entry))
        if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
            return True
    return False


def _wait_group_gone(pgid: int, bound: float) -> None:
    deadline = time.monotonic() + bound
    delay = 0.0005
    while _group_has_live_member(pgid) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


# Per #! line: the zygote and argv[0] that run it warm, None for cold; valid for
# one user, environment and cwd.
_Targets = dict[zygote.Shebang, tuple[zygote.Key, str] | None]


@dataclass
class _Chain:
    """What the scripts of one chain share."""

    directory: str  # the hook user's, 0700, in the run dir
    path: str  # the data file
    name: str
    user: HookUser | None
    owner: int  # who owns the data file
    env: dict[str, str]
    env_list: list[bytes]
    devnull: int
    groups: groups.ChainGroups
    cwd: str = ""
    umask: int | None = None  # read when a script first goes warm
    # The chain's user, environment and cwd are fixed: once per chain, not per script.
    targets: _Targets = field(default_factory=dict)
    canonicals: diffs.CanonicalCache = field(default_factory=diffs.CanonicalCache)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


# The names tests and older code use.
_Child = Child
_killpg = spawn_mod._killpg


class HookRunner:
    def __init__(self, config: RunnerConfig, records: RunRecords | None = None) -> None:
        self.config = config
        self.records = records
        self._checksums = ChecksumCache()
        self._manifests = ManifestCache()
        self._listings = ListingCache()
        self._shebangs: dict[str, tuple[tuple[int, int, int], zygote.Shebang | None]] = {}
        self.warm = zygote.WarmPool()
        self._run_dir_ready = False
        self._lock = threading.Lock()
        self._user: HookUser | None = None
        self._said_no_switch = False
        # Chains' group files kept because a leftover of theirs still runs.
        self._kept: list[groups.ChainGroups] = []
        self._created = time.time()
        # Records that could not be written (reported by getVdsStats).
        self.record_failures = 0
        self.last_record_error = ""

    def installed(self) -> dict[str, dict[str, dict[str, str]]]:
        return installed(self.config.hooks_dir, self._checksums, self._listings)

    def scripts(self, event: str) -> list[Script]:
        return list_scripts(self.config.hooks_dir, event, self._listings)

    def close(self) -> None:
        """Stop the warm executors (they also exit on their own once the runner is gone)."""
        self.warm.close()

    def prewarm(self) -> threading.Thread | None:
        """Start, in the background, the zygotes the installed Python hooks will
        use, so that the first of them does not wait for one (about 80 ms).
        The thread, or None when there is nothing to start."""
        if not self.config.warm_hooks or not zygote.SUPPORTED:
            return None
        ev = get_event("before_vm_start")  # any event that is not clean_env: same start-up
        try:
            user = self.hook_user(ev)
            listed = [s for e in EVENTS for s in self.scripts(e)]
        except (HookUserError, OSError):
            return None
        env = build_environment(
            ev, base_env=os.environ if self.config.base_env is None else self.config.base_env,
        ).env
        if user is not None:
            env.update(user.env())
        cwd = _cwd()
        keys: dict[zygote.Key, None] = {}
        targets: _Targets = {}
        for script in listed:
            manifest = None
            if script.manifest is not None:
                try:
                    manifest = self._manifests.load(script.manifest)
                except ManifestError:
                    continue
            warm = self._warm_key(script, manifest, user, env, cwd, targets)
            if warm is not None:
                keys[warm[0]] = None
        if not keys:
            return None

        def start() -> None:
            for key in list(keys)[:zygote.MAX_ZYGOTES]:
                self.warm.prestart(key, user)

        thread = threading.Thread(target=start, name="hook-prewarm", daemon=True)
        thread.start()
        return thread

    # --- how a script is started ----------------------------------------------------

    def _shebang(self, script: Script) -> zygote.Shebang | None:
        """The script's `#!` line, read again only when the file changed."""
        key = (script.ino, script.size, script.mtime_ns)
        path = str(script.path)
        hit = self._shebangs.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = zygote.read_shebang(path)
        with self._lock:
            if len(self._shebangs) > 4096:
                self._shebangs.clear()
            self._shebangs[path] = (key, value)
        return value

    def _warm_key(self, script: Script, manifest: Manifest | None, user: HookUser | None,
                  env: dict[str, str], cwd: str, targets: _Targets,
                  ) -> tuple[zygote.Key, str, bytes] | None:
        """The zygote that may run `script`, its argv[0] and #! line; None: run it cold.
        `targets`: what earlier scripts with the same user, environment and cwd found."""
        if not self.config.warm_hooks or not zygote.SUPPORTED:
            return None
        if manifest is not None and not manifest.warm:
            return None
        if user is None and identity.can_switch():
            return None  # a hook that runs as root (vdsm start/stop): never a root zygote
        shebang = self._shebang(script)
        if shebang is None:
            return None
        if shebang in targets:
            found = targets[shebang]
        else:
            target = zygote.warm_target(shebang, env, user)
            found = None if target is None else (
                zygote.Key(target[0], user.uid if user is not None else None,
                           zygote.startup_env(env), cwd), target[1])
            targets[shebang] = found
        if found is None:
            return None
        return found[0], found[1], shebang.line

    def _spawn(self, script: Script, manifest: Manifest | None, chain: _Chain, out_w: int,
               err_w: int) -> int:
        """Start the script (warm if it may, else cold); its pid, our child, the
        leader of its own process group. OSError if it cannot be executed."""
        warm = self._warm_key(script, manifest, chain.user, chain.env, chain.cwd, chain.targets)
        if warm is not None:
            key, argv0, line = warm
            if chain.umask is None:
                chain.umask = zygote.current_umask()
            try:
                return self.warm.spawn(key, chain.user, str(script.path), argv0, chain.umask,
                                       line, chain.env_list, chain.devnull, out_w, err_w)
            except zygote.WarmUnavailable:
                pass  # logged by the pool; nothing of the script ran
        return spawn_mod.spawn(str(script.path), chain.env, chain.env_list, chain.devnull,
                               out_w, err_w, chain.user)

    # --- who runs a hook, and where its files are -----------------------------

    def hook_user(self, ev: Event) -> HookUser | None:
        """The user the event's scripts run as; None: as the agent itself.

        HookUserError if the agent is root and the hook user does not exist.
        """
        if ev.clean_env or self.config.hook_user is None:
            return None  # before_vdsm_start / after_vdsm_stop: root (SPEC §1)
        if not identity.can_switch():
            if not self._said_no_switch:
                self._said_no_switch = True
                log.info("agent is not root: hooks run as uid %d, not as %s",
                         os.geteuid(), self.config.hook_user)
            return None
        with self._lock:
            if self._user is None:
                # Looked up once: a user changed later needs an agent restart.
                self._user = identity.lookup(self.config.hook_user)
            return self._user

    def _launch_dir(self) -> Path:
        return self.config.launchflags_dir or flags_dir(self.config.run_dir)

    def _prepare_run_dir(self, user: HookUser | None = None) -> str:
        run_dir = str(self.config.run_dir)
        if not self._run_dir_ready:
            os.makedirs(run_dir, mode=0o711, exist_ok=True)
            self._run_dir_ready = True
        if user is not None:
            st = os.stat(run_dir)
            if not st.st_mode & stat.S_IXOTH:
                # The hook user reaches its chain directory through it; nothing
                # in it can be listed or read through this bit.
                os.chmod(run_dir, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            self._prepare_launch_dir(user)
        return run_dir

    def _prepare_launch_dir(self, user: HookUser) -> None:
        """Launch flags: a directory the hook user writes (hooking's dump does), no one else."""
        path = str(self._launch_dir())
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, f"{path} is not a directory")
        if st.st_uid != user.uid or stat.S_IMODE(st.st_mode) != 0o700:
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
            os.chmod(path, 0o700)

    def cleanup_stale(self) -> int:
        """At agent start: remove what an agent that died (SIGKILL, power loss) left.

        Its chains' data directories, the launch-flags files older than this
        runner, and the process groups of hooks it left running (killed, with
        SIGKILL, only if still the same groups). How many things were removed.
        """
        run_dir = str(self.config.run_dir)
        # The groups first: a dead agent's hooks may still write in their directories.
        removed = groups.kill_stale(Path(run_dir, groups.GROUPS_DIR))
        try:
            names = os.listdir(run_dir)
        except OSError:
            names = []
        for name in names:
            parts = name.split("-")
            if not name.startswith(TEMP_PREFIX) or len(parts) < 3 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid():
                continue
            # A zombie is dead (a SIGKILLed agent its parent has not reaped yet).
            st = groups.proc_stat(pid)
            if st is not None and st[0] not in ("Z", "X"):
                continue
            path = os.path.join(run_dir, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except OSError:
                pass
        removed += self._remove_stale_flags()
        return removed

    def _remove_stale_flags(self) -> int:
        """Launch flags live from before_vm_start to the VM's start: any file
        older than this runner is a dead agent's."""
        directory = str(self._launch_dir())
        removed = 0
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return 0
        for entry in entries:
            try:
                # A second of slack: file times are coarser than time.time().
                if entry.stat(follow_symlinks=False).st_mtime < self._created - 1.0:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed

    # --- one chain ---------------------------------------------------------------

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
        for name in () if ev.open_extras else extra_env or {}:
            if name not in ev.extras:
                raise ValueError(f"event {ev.name} takes no extra variable {name!r}")
        chain_id = uuid.uuid4().hex
        try:
            scripts = list_scripts(self.config.hooks_dir, event, self._listings)
        except OSError as e:
            # An unreadable hook dir must not mean "no hooks": a vetoing hook
            # would be skipped without a word. It fails the chain instead.
            where = os.path.join(self.config.hooks_dir, event)
            return self._chain_failed(chain_id, ev, vm_id, data,
                                      f"cannot list {where}: {e.strerror}")
        if not scripts:
            return ChainResult(chain_id, ev, vm_id, data, [], False)
        try:
            user = self.hook_user(ev)
        except HookUserError as e:
            return self._chain_failed(chain_id, ev, vm_id, data, str(e))
        # OSError (run dir read-only, full, ...) goes to the caller, as before.
        run_dir = self._prepare_run_dir(user)
        runs: list[ScriptRun] = []
        suffix = ".json" if ev.payload is Payload.JSON else ".xml"
        directory = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=run_dir)
        chain_groups = groups.ChainGroups(Path(run_dir, groups.GROUPS_DIR), chain_id)
        refused: list[str] = []
        devnull = -1
        try:
            initial = data.encode("utf-8")
            name = "data" + suffix
            path = _create_data(directory, name, initial, user)
            if user is not None:
                # Created as root first: nothing of the hook user's was ever there.
                os.chown(directory, user.uid, user.gid)
            environment = build_environment(
                ev,
                base_env=os.environ if self.config.base_env is None else self.config.base_env,
                vm_id=vm_id,
                vm_props=vm_props,
                device_props=device_props,
                extra_env=extra_env,
                data_path=path,
                launchflags_dir=str(self._launch_dir()),
            )
            refused = environment.refused
            env = environment.env
            if user is not None:
                env.update(user.env())
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            chain = _Chain(directory, path, name, user,
                           user.uid if user is not None else os.geteuid(), env,
                           spawn_mod.encode_env(env), devnull, chain_groups, _cwd())
            props = set(vm_props or {}) | set(device_props or {})
            final = self._chain(ev, scripts, chain, initial, props, runs)
        finally:
            if devnull >= 0:
                os.close(devnull)
            shutil.rmtree(directory, ignore_errors=True)
            self._finish_groups(chain_groups)
            self._record(chain_id, ev, vm_id, runs, ChainInput.of(
                data, self.config.input_cap, vm_props, device_props, extra_env))
        vetoed = ev.vetoes and any(r.failed and not r.ignored for r in runs)
        out = final.decode("utf-8") if ev.modifies else data
        return ChainResult(chain_id, ev, vm_id, out, runs, vetoed, refused)

    def _chain_failed(self, chain_id: str, ev: Event, vm_id: str | None, data: str,
                      message: str) -> ChainResult:
        run = ScriptRun(f"({ev.name})", ev.name, "", "failed", None, 0.0, time.time(),
                        message=message, stops_chain=True)
        log.warning("%s", run.describe())
        self._record(chain_id, ev, vm_id, [run])
        return ChainResult(chain_id, ev, vm_id, data, [run], ev.vetoes)

    def _finish_groups(self, chain_groups: groups.ChainGroups) -> None:
        """Forget the chain's groups once gone; keep (and recheck later) those a
        leftover still holds, so that a dead agent's successor can kill them."""
        try:
            alive = [g for g in chain_groups.groups if _group_has_live_member(g.pgid)]
            kept = chain_groups.finish(alive)
            with self._lock:
                if kept:
                    self._kept.append(chain_groups)
                if not self._kept:
                    return
                old, self._kept = self._kept, []
            still = [c for c in old
                     if c.finish([g for g in c.groups if _group_has_live_member(g.pgid)])]
            with self._lock:
                self._kept.extend(still)
        except OSError as e:
            log.warning("cannot update the hook process group files: %s", e)

    def _chain(
        self,
        ev: Event,
        scripts: list[Script],
        chain: _Chain,
        initial: bytes,
        props: set[str],
        runs: list[ScriptRun],
    ) -> bytes:
        current = initial
        # Parsed only once a script changed the data: no-op chains never parse.
        base: validation.Baseline | None = None
        base_ready = False
        for script in scripts:
            run, after = self._run_one(ev, script, chain, current, props)
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
                    try:
                        _create_data(chain.directory, chain.name, current, chain.user)
                    except OSError as e:
                        run.stops_chain = True
                        run.message = "; ".join(
                            m for m in (run.message, f"cannot restore the data file: {e}") if m)
                else:
                    current = after
            runs.append(run)
            if run.failed:
                log.warning("%s", run.describe())
            if run.stops_chain:
                break
        return current

    def _run_one(
        self,
        ev: Event,
        script: Script,
        chain: _Chain,
        current: bytes,
        props: set[str],
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
        if script.refused is not None:
            return result("failed", script.refused, True)
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

        out, err, out_w, err_w = open_streams(self.config.output_cap)
        streams: tuple[Stream, ...] = (out, err)
        t0 = time.monotonic()
        try:
            try:
                pid = self._spawn(script, manifest, chain, out_w, err_w)
            finally:
                os.close(out_w)
                os.close(err_w)
        except OSError as e:
            close_streams(streams)
            return result("failed", f"cannot execute {script.path}: {e.strerror}", True)
        child = _Child(pid, streams)
        timed_out = False
        try:
            try:
                chain.groups.add(pid, chain.owner, script.name)
            except OSError as e:
                # Only a dead agent's successor needs it: the hook runs anyway.
                log.warning("cannot note the process group of %s: %s", script.name, e)
            if not child.wait_exit(timeout):
                timed_out = True
                child.stop(self.config.grace)
            elif self.config.kill_leftovers:
                _killpg(pid, signal.SIGKILL)
            rc = child.reap()
            if timed_out or self.config.kill_leftovers:
                # SIGKILL is delivered asynchronously: return once the group is gone.
                _wait_group_gone(pid, max(self.config.grace, 1.0))
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit): take the script with us.
            child.kill()
            close_streams(streams)
            raise
        duration = time.monotonic() - t0
        close_streams(streams)  # reads what is left first

        message = ""
        try:
            after = _read_data(chain.path, chain.owner, self.config.data_cap)
            bad = None
        except BadData as e:
            after, bad = None, str(e)
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
        if bad is not None:
            if not timed_out:
                outcome, stops = "invalid-output", True
            message = "; ".join(m for m in (message, f"{bad}; its edits were discarded") if m)
        elif after is None:
            message = "; ".join(m for m in (message, "removed the data file") if m)
        diff = raw_diff = ""
        if after is not None and after != current:
            diff, raw_diff = diffs.for_payload("json" if ev.payload is Payload.JSON else "xml",
                                               current, after, script.name,
                                               self.config.diff_cap, chain.canonicals)
        run = ScriptRun(
            script.name, ev.name, checksum, outcome, rc_out, duration, started,
            out.text(), err.text(), out.cut, err.cut,
            diff=diff, message=message, ignored=ignored,
            stops_chain=stops, pgid=pid, raw_diff=raw_diff,
        )
        return run, after

    def _record(self, chain_id: str, ev: Event, vm_id: str | None, runs: list[ScriptRun],
                chain: ChainInput | None = None) -> None:
        if self.records is None or not runs:
            return
        try:
            self.records.add(
                [RunRecord(
                    chain_id, r.started, ev.name, vm_id, r.script, r.checksum, r.outcome, r.rc,
                    r.duration, r.stdout, r.stdout_truncated, r.stderr, r.stderr_truncated,
                    r.diff, r.message, r.raw_diff,
                ) for r in runs], chain)
        except (sqlite3.Error, OSError) as e:
            # Losing a record must never change what the operation does; it is
            # counted and reported (getVdsStats) with its real cause.
            where = getattr(self.records, "path", "?")
            cause = f"{type(e).__name__}: {e}"
            if isinstance(e, sqlite3.Error):
                cause += _fs_cause(Path(str(where)))
            with self._lock:
                self.record_failures += 1
                self.last_record_error = f"{where}: {cause}"
            log.warning("could not record %d hook run(s) of %s in %s: %s", len(runs), ev.name,
                        where, cause)


def _fs_cause(path: Path) -> str:
    """SQLite says "readonly database" or "disk I/O error"; the file system says why."""
    directory = path.parent
    try:
        st = os.statvfs(directory)
    except OSError as e:
        return f" ({directory}: {e.strerror})"
    if st.f_flag & os.ST_RDONLY:
        return f" ({directory} is on a read-only file system)"
    if st.f_bavail == 0:
        return f" ({directory}: no space left on device)"
    if not os.access(directory, os.W_OK):
        return f" ({directory} is not writable)"
    return ""
