"""Run records: one write per chain, every outcome, capped retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hookvisor.hooks.records import RunRecord, RunRecords

from .conftest import MakeRunner
from .util import DOMAIN, UUID, sh, write_hook

EV = "before_vm_start"


def test_every_run_recorded_with_its_details(hooks_dir: Path, make_runner: MakeRunner,
                                             tmp_path: Path) -> None:
    write_hook(hooks_dir, EV, "10_edit", sh("""
        echo out; echo err >&2
        sed -i 's#vm1#vm1#; s#</devices>#<rng/></devices>#' "$_hook_domxml"
    """))
    write_hook(hooks_dir, EV, "20_skip", sh("exit 0\n"))
    write_hook(hooks_dir, EV, "20_skip.toml", 'when_property = ["nope"]\n', mode=0o644)
    write_hook(hooks_dir, EV, "30_fail", sh("echo bad >&2; exit 1\n"))
    write_hook(hooks_dir, EV, "40_invalid", sh("""echo junk > "$_hook_domxml"\n"""))
    runner = make_runner(records=True)
    result = runner.run(EV, DOMAIN, vm_id=UUID)
    assert runner.records is not None
    rows = list(reversed(runner.records.query()))
    assert [(r.script, r.outcome, r.rc) for r in rows] == [
        ("10_edit", "ok", 0), ("20_skip", "skipped", None), ("30_fail", "failed", 1),
        ("40_invalid", "invalid-output", 0),
    ]
    assert {r.chain_id for r in rows} == {result.chain_id}
    assert all(r.vm_id == UUID and r.event == EV for r in rows)
    edit = rows[0]
    assert (edit.stdout, edit.stderr) == ("out\n", "err\n")
    assert "+" in edit.diff and "<rng/>" in edit.diff
    assert edit.checksum == result.runs[0].checksum and len(edit.checksum) == 64
    assert rows[3].message and "junk" in rows[3].diff
    assert [r.script for r in runner.records.query(failed=True)] == ["40_invalid", "30_fail"]
    assert runner.records.query(vm_id="other") == []
    assert len(runner.records.query(event=EV, limit=2)) == 2
    assert len(runner.records.query(chain_id=result.chain_id)) == 4


def test_written_once_per_chain(hooks_dir: Path, make_runner: MakeRunner,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        write_hook(hooks_dir, EV, f"{i}_x", sh("exit 0\n"))
    store = RunRecords(tmp_path / "r.sqlite")
    calls: list[int] = []
    real = store.add

    def add(runs: object, chain: object = None) -> None:
        batch = list(runs)  # type: ignore[call-overload]
        calls.append(len(batch))
        real(batch, chain)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "add", add)
    make_runner(records=store).run(EV, DOMAIN)
    assert calls == [5]


def test_retention_keeps_the_newest(hooks_dir: Path, make_runner: MakeRunner,
                                    tmp_path: Path) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("exit 0\n"))
    write_hook(hooks_dir, EV, "20_b", sh("exit 0\n"))
    store = RunRecords(tmp_path / "r.sqlite", limit=5)
    runner = make_runner(records=store)
    chains = [runner.run(EV, DOMAIN, vm_id=str(i)).chain_id for i in range(6)]
    assert store.count() == 5
    kept = store.query(limit=None)
    assert [r.vm_id for r in kept] == ["5", "5", "4", "4", "3"]
    assert kept[0].chain_id == chains[-1]


def test_output_cap_marked(tmp_path: Path, hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("head -c 70000 /dev/zero | tr '\\0' x >&2\n"))
    runner = make_runner(records=True)
    runner.run(EV, DOMAIN)
    assert runner.records is not None
    row = runner.records.query()[0]
    assert row.stderr_truncated and len(row.stderr) == 64 * 1024 and not row.stdout_truncated


def test_wal_mode_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hookruns.sqlite"
    store = RunRecords(path)
    record = RunRecord("c1", 1.0, EV, None, "10_x", "ab" * 32, "ok", 0, 0.01, "", False, "",
                       False, "", "")
    store.add([record])
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = RunRecords(path).query()
    assert len(again) == 1 and again[0].script == "10_x" and again[0].failed is False
    assert again[0].to_dict()["chain_id"] == "c1"


def test_a_broken_store_does_not_break_the_chain(hooks_dir: Path, make_runner: MakeRunner,
                                                 tmp_path: Path) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    store = RunRecords(blocker / "hookruns.sqlite")  # its parent cannot be a directory
    result = make_runner(records=store).run(EV, DOMAIN)
    assert result.ok and len(result.runs) == 1


def test_limit_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RunRecords(tmp_path / "x.sqlite", limit=0)
