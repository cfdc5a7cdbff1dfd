"""The hook directory listing cache: an unchanged directory is not re-read,
any change to it is seen at once, and what the listing cannot show (a
script's mode, owner, content) is checked on every event."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hookvisor.hooks import discovery
from hookvisor.hooks.discovery import ListingCache, list_scripts

from .conftest import MakeRunner
from .util import sh, write_hook

EV = "before_vm_start"


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Directories written by the test count as older than the racy window
    (which otherwise keeps anything changed in the last 2 s from being cached)."""
    monkeypatch.setattr(discovery, "RACY_WINDOW_NS", -1)


def _names(hooks_dir: Path, cache: ListingCache) -> list[str]:
    return [s.name for s in list_scripts(hooks_dir, EV, cache)]


def test_an_unchanged_directory_is_read_once(hooks_dir: Path, settled: None) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("exit 0"))
    cache = ListingCache()
    for _ in range(5):
        assert _names(hooks_dir, cache) == ["10_a"]
    assert cache.scans == 1


@pytest.mark.parametrize("change", ["add", "remove", "rename", "symlink"])
def test_any_change_of_entries_is_seen_at_once(hooks_dir: Path, settled: None,
                                               change: str) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("exit 0"))
    cache = ListingCache()
    assert _names(hooks_dir, cache) == ["10_a"]
    directory = hooks_dir / EV
    if change == "add":
        write_hook(hooks_dir, EV, "20_b", sh("exit 0"))
        expected = ["10_a", "20_b"]
    elif change == "remove":
        (directory / "10_a").unlink()
        expected = []
    elif change == "rename":
        (directory / "10_a").rename(directory / "30_c")
        expected = ["30_c"]
    else:
        os.symlink(directory / "10_a", directory / "05_link")
        expected = ["05_link", "10_a"]
    assert _names(hooks_dir, cache) == expected
    assert cache.scans == 2


def test_a_directory_changed_within_the_racy_window_is_not_cached(hooks_dir: Path) -> None:
    """Same tick: an entry added after the listing may leave the mtime as it was."""
    write_hook(hooks_dir, EV, "10_a", sh("exit 0"))
    cache = ListingCache()
    _names(hooks_dir, cache)
    _names(hooks_dir, cache)
    assert cache.scans == 2


def _stat_at(directory: Path, when_ns: int) -> os.stat_result:
    """The directory's stat as if last changed at `when_ns`."""
    st = list(os.stat(directory))
    st[8] = st[9] = when_ns // 10**9  # st_mtime, st_ctime (the ns fields follow)
    result = os.stat_result(st, {"st_mtime_ns": when_ns, "st_ctime_ns": when_ns})
    assert result.st_mtime_ns == when_ns
    return result


@pytest.mark.parametrize("age_s", [0.0, 1.5, 2.5])
def test_a_change_in_the_same_tick_is_seen_unless_settled(hooks_dir: Path,
                                                          age_s: float) -> None:
    """Two listings with the very same directory stat (an entry added within
    the same timestamp tick): the second is re-read while the time is racy."""
    write_hook(hooks_dir, EV, "10_a", sh("exit 0"))
    directory = hooks_dir / EV
    st = _stat_at(directory, time.time_ns() - int(age_s * 1e9))
    cache = ListingCache()
    first = cache.listing(str(directory), st)
    write_hook(hooks_dir, EV, "20_b", sh("exit 0"))
    second = cache.listing(str(directory), st)
    names = sorted(n for n, _, _ in second[0])
    if age_s * 1e9 < discovery.RACY_WINDOW_NS:
        assert names == ["10_a", "20_b"] and cache.scans == 2
    else:
        # Settled: the stat is trusted (a real change would have changed it).
        assert second is first and names == ["10_a"] and cache.scans == 1


def test_a_chmod_on_a_cached_script_is_seen(hooks_dir: Path, settled: None,
                                            make_runner: MakeRunner) -> None:
    """chmod changes the file's ctime, not its directory's mtime."""
    script = write_hook(hooks_dir, EV, "10_a", sh("echo ran"))
    runner = make_runner()
    assert runner.run(EV, "<domain/>").runs[0].outcome == "ok"
    script.chmod(0o775)
    run = runner.run(EV, "<domain/>").runs[0]
    assert run.outcome == "failed" and "group-writable" in run.message
    script.chmod(0o644)  # no longer executable: no longer a hook
    assert runner.run(EV, "<domain/>").runs == []
    assert runner._listings.scans == 1


def test_a_rewritten_cached_script_runs_as_rewritten(hooks_dir: Path, settled: None,
                                                     make_runner: MakeRunner) -> None:
    script = write_hook(hooks_dir, EV, "10_a", sh("echo one"))
    runner = make_runner()
    first = runner.run(EV, "<domain/>").runs[0]
    script.write_text(sh("echo two"))  # in place: the directory does not change
    second = runner.run(EV, "<domain/>").runs[0]
    assert (first.stdout, second.stdout) == ("one\n", "two\n")
    assert first.checksum != second.checksum
    assert runner._listings.scans == 1


def test_a_manifest_added_beside_a_cached_script_is_seen(hooks_dir: Path, settled: None,
                                                         make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("echo ran"))
    runner = make_runner()
    assert runner.run(EV, "<domain/>").runs[0].outcome == "ok"
    (hooks_dir / EV / "10_a.toml").write_text('when_property = ["numa"]\n')
    assert runner.run(EV, "<domain/>").runs[0].outcome == "skipped"


def test_the_directory_made_writable_is_seen(hooks_dir: Path, settled: None,
                                             make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("echo ran"))
    runner = make_runner()
    assert runner.run(EV, "<domain/>").ok
    (hooks_dir / EV).chmod(0o777)
    try:
        run = runner.run(EV, "<domain/>").runs[0]
    finally:
        (hooks_dir / EV).chmod(0o755)
    assert run.outcome == "failed" and "other-writable" in run.message
