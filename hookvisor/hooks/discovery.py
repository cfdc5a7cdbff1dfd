"""Which scripts run for an event, in which order, and what they are (sha256).

SPEC §1: every regular, executable file of `<hooks_dir>/<event>/` (symlinks to
such files count), dotfiles, sub-directories and non-executables skipped, in
byte-wise sorted order of file name. An unchanged directory is not re-read:
its listing (names, which are manifests, which are symlinks) is cached keyed by
its identity, mtime and ctime (ListingCache), never trusted while that time is
within RACY_WINDOW of now (a file added within the same timestamp tick would
not change it). What the listing cannot show is checked on every event: each
candidate is stat'ed (executable, regular, its identity for the checksum) and
the trust checks run on that fresh stat (a chmod g+w changes the file's ctime,
not its directory's mtime). A script that anyone but root could change is listed with `refused` set
(hookvisor.hooks.trust): the runner fails it rather than skip it silently.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hookvisor.hooks import trust
from hookvisor.hooks.catalogue import EVENTS, get_event
from hookvisor.hooks.manifest import MANIFEST_SUFFIX, manifest_names


@dataclass(frozen=True)
class Script:
    name: str
    path: Path
    # Identity of the file when it was listed; keys the checksum cache.
    ino: int
    size: int
    mtime_ns: int
    # Its manifest, if the directory holds one (found in the same listing, so
    # a script without a manifest costs no extra system call).
    manifest: Path | None = None
    # Why it may not run (writable by someone other than root, here or in its
    # directories), with the fix; None if it may.
    refused: str | None = None


def _executable(path: str) -> os.stat_result | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to a script counts
    except OSError:
        return None  # dangling symlink, vanished meanwhile
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        return None
    return st


# File times are set from a clock coarser than time.time_ns() (the kernel's
# tick, or a file system's granularity: 2 s on FAT): a listing whose directory
# changed this recently may miss an entry added in the same tick.
RACY_WINDOW_NS = 2_000_000_000

_Listing = tuple[list[tuple[str, str, bool]], frozenset[str]]


def _scan(directory: str) -> _Listing:
    candidates: list[tuple[str, str, bool]] = []
    manifests: set[str] = set()
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if name.startswith("."):
                continue
            # A manifest documents its script and is never run, even if
            # someone marks it executable.
            if name.endswith(MANIFEST_SUFFIX):
                manifests.add(name)
            else:
                candidates.append((name, entry.path, entry.is_symlink()))
    return candidates, frozenset(manifests)


class ListingCache:
    """Event directories' listings, reused while the directory is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int, int, int], _Listing]] = {}
        self.scans = 0  # how many times a directory was actually read (tests)

    def listing(self, directory: str, st: os.stat_result) -> _Listing:
        """The listing of `directory`, whose stat (taken before) is `st`."""
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        # git's "racily clean" rule: stat before reading, and trust nothing whose
        # time is too recent to tell a later change in the same tick apart.
        settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_WINDOW_NS
        with self._lock:
            hit = self._cache.get(directory)
        if settled and hit is not None and hit[0] == key:
            return hit[1]
        listing = _scan(directory)
        self.scans += 1
        if settled:
            with self._lock:
                self._cache[directory] = (key, listing)
        else:
            with self._lock:
                self._cache.pop(directory, None)
        return listing


def list_scripts(hooks_dir: Path, event: str,
                 cache: ListingCache | None = None) -> list[Script]:
    """The scripts for `event` in run order; [] if the event has no directory.

    ValueError for an unknown or path-like event name.
    """
    get_event(event)
    directory = os.path.join(hooks_dir, event)
    dir_st: os.stat_result | None = None
    try:
        if cache is None:
            candidates, manifests = _scan(directory)
        else:
            dir_st = os.stat(directory)
            candidates, manifests = cache.listing(directory, dir_st)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found: list[Script] = []
    owners = trust.allowed_owners()
    dir_problem: str | None = None
    dirs_checked = False
    for name, path, is_link in candidates:
        st = _executable(path)
        if st is None:
            continue
        if not dirs_checked:
            # Only once there is something to run: an event without scripts costs nothing.
            dir_problem = trust.check_dir(str(hooks_dir), owners) or (
                trust.problem(directory, dir_st, owners) if dir_st is not None
                else trust.check_dir(directory, owners))
            dirs_checked = True
        refused = dir_problem or trust.check_script(path, st, is_link, owners)
        manifest = None
        if manifests:
            for candidate in manifest_names(name):
                if candidate in manifests:
                    manifest = Path(directory, candidate)
                    break
        if manifest is not None and refused is None:
            # A manifest can skip its script (when_property) or stretch its
            # timeout: it must be as trusted as the script.
            try:
                refused = trust.problem(str(manifest), os.stat(manifest), owners)
            except OSError as e:
                refused = f"cannot check {manifest}: {e.strerror}"
        found.append(Script(name, Path(path), st.st_ino, st.st_size, st.st_mtime_ns, manifest,
                            refused))
    # Byte-wise, not locale or natural order: what `LC_ALL=C ls` shows.
    found.sort(key=lambda s: os.fsencode(s.name))
    return found


class ChecksumCache:
    """sha256 of scripts, re-hashed only when (inode, size, mtime) changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int, int], str]] = {}

    def checksum(self, script: Script) -> str:
        key = (script.ino, script.size, script.mtime_ns)
        path = str(script.path)
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        digest = hashlib.sha256()
        try:
            with open(script.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 16), b""):
                    digest.update(block)
        except OSError:
            return ""  # vanished between listing and hashing; it will fail to run too
        value = digest.hexdigest()
        with self._lock:
            self._cache[path] = (key, value)
        return value


Installed = dict[str, dict[str, dict[str, str]]]


def installed(hooks_dir: Path, cache: ChecksumCache | None = None,
              listings: ListingCache | None = None) -> Installed:
    """`{event: {script: {"checksum": sha256hex}}}` for the host capabilities report."""
    cache = cache or ChecksumCache()
    out: Installed = {}
    for event in EVENTS:
        scripts = list_scripts(hooks_dir, event, listings)
        if scripts:
            out[event] = {s.name: {"checksum": cache.checksum(s)} for s in scripts}
    return out
