"""Read-only and full state and run dirs (issue 7 item 10), on real mounts.

Root only: a read-only tmpfs is the case that matters (permission bits do not
stop root). Every mount is undone in `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    # mode=0755: a tmpfs is 1777 by default, and the agent refuses a run or state
    # dir others can write.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode=0755,{options}", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        yield path
    finally:
        # Lazy: an agent still running (killed by its fixture later) may hold files open.
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def serve(dirs: Any, state: Path, run: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookvisor.cli.main", "serve",
         "--hooks-dir", str(dirs.hooks), "--state-dir", str(state), "--run-dir", str(run)],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("which", ["state", "run"])
def test_a_read_only_dir_stops_the_start(dirs: Any, tmp_path: Path, which: str) -> None:
    dirs.hook("before_vdsm_start", "50_mark", f"touch {tmp_path}/started\n")
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        state, run = (ro, dirs.run) if which == "state" else (dirs.state, ro)
        proc = serve(dirs, state, run)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"cannot start: {which} dir {ro} is not writable: Read-only file system" in lines[0]
    # Refused before anything ran: no start hook, nothing said ready.
    assert not (tmp_path / "started").exists()


def test_a_missing_dir_that_cannot_be_made_stops_the_start(dirs: Any, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        proc = serve(dirs, ro / "state", dirs.run)
    assert proc.returncode == 1
    assert f"state dir {ro / 'state'} is not writable: Read-only file system" in proc.stderr
    assert "Traceback" not in proc.stderr


def fill(directory: Path) -> None:
    """Write until the file system says it is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def test_a_full_state_dir_loses_records_not_vms(dirs: Any, serve_process: Any) -> None:
    dirs.hook("before_vm_start", "50_talk", "echo hello from the hook\n")
    with tmpfs(dirs.state, "size=512k"):
        agent = serve_process()
        fill(dirs.state)
        p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-full", "memSize": 64}
        reply = agent.api.create(p)
        assert reply["status"]["code"] == 0, reply
        assert agent.api.destroy(p["vmId"])["status"]["code"] == 0
        assert agent.api.getVdsStats()["status"]["code"] == 0
        assert agent.stop() == 0
    assert "hook run(s) of before_vm_start" in agent.log()


def test_a_lost_record_is_counted_in_vds_stats(dirs: Any, serve_process: Any) -> None:
    dirs.hook("before_vm_start", "50_talk", "echo hello from the hook\n")
    with tmpfs(dirs.state, "size=512k"):
        agent = serve_process()
        assert agent.api.getVdsStats()["info"]["hookRecordFailures"] == 0
        fill(dirs.state)
        p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-full", "memSize": 64}
        try:
            assert agent.api.create(p)["status"]["code"] == 0
            info = agent.api.getVdsStats()["info"]
        finally:
            agent.api.destroy(p["vmId"])
            agent.stop()
    assert info["hookRecordFailures"] >= 1
    assert "no space left on device" in info["hookRecordLastError"].lower()
    assert "no space left on device" in agent.log().lower()


@pytest.mark.parametrize("paused", [False, True])
def test_a_run_dir_gone_read_only_is_create_err_naming_the_path(
        dirs: Any, serve_process: Any, paused: bool) -> None:
    dirs.hook("before_vm_start", "50_talk", "echo hello from the hook\n")
    with tmpfs(dirs.run, "size=512k"):
        agent = serve_process()
        subprocess.run(["mount", "-o", "remount,ro", str(dirs.run)], check=True, timeout=30)
        p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-rorun", "memSize": 64,
             "launchPaused": paused}
        reply = agent.api.create(p)
        assert reply["status"]["code"] == 9, reply  # createErr
        assert f"Read-only file system: {dirs.run}/" in reply["status"]["message"]
        assert agent.api.list()["vmList"] == []  # nothing half-made is listed
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()
