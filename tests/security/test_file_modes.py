"""Files the agent keeps that hold what hooks and domains carry are the agent's alone.

Hook records hold every script's stdout, stderr and the diff of the domain XML
it edited (a <graphics passwd=...>, a secret a hook printed): the data file
and the outputs are the hook user's and no one else's (issue 7 §4), so their
record must not be world-readable either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hookvisor.hooks.records import RunRecord, RunRecords


def _record() -> RunRecord:
    return RunRecord("c1", 1.0, "before_vm_start", None, "10_x", "ab" * 32, "ok", 0, 0.01,
                     "secret output", False, "", False, "+<graphics passwd='s3cret'/>", "")


def _modes(path: Path) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in path.parent.iterdir()
            if p.name.startswith(path.name)}


def test_hook_records_are_not_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hookruns.sqlite"
    old = os.umask(0o022)
    try:
        records = RunRecords(path)
        records.add([_record()])
        modes = _modes(path)
        records.close()
    finally:
        os.umask(old)
    assert {"hookruns.sqlite", "hookruns.sqlite-wal"} <= set(modes), modes
    assert all(int(m, 8) & 0o077 == 0 for m in modes.values()), modes


def test_records_an_older_agent_left_readable_are_closed(tmp_path: Path) -> None:
    path = tmp_path / "hookruns.sqlite"
    old = os.umask(0o022)
    try:
        records = RunRecords(path)
        records.add([_record()])
        records.close()
        path.chmod(0o644)
        records = RunRecords(path)
        records.add([_record()])
        modes = _modes(path)
        records.close()
    finally:
        os.umask(old)
    assert all(int(m, 8) & 0o077 == 0 for m in modes.values()), modes
