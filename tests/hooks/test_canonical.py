"""Diffs of canonical XML/JSON (only real changes), raw diffs kept, chain inputs for replay."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookvisor.hooks import diffs
from hookvisor.hooks.diffs import CanonicalCache, canonical, for_payload
from hookvisor.hooks.records import REDACTED, ChainInput, RunRecord, RunRecords

BEFORE = (b"<domain type='kvm'>\n  <name>x</name>\n  <devices/>\n"
          b"  <description>a &quot;b&quot;</description>\n</domain>\n")
# minidom's rewrite: a declaration, double quotes, `<devices />`, a bare `"`, one line.
NOISE = (b'<?xml version="1.0" ?><domain type="kvm"><name>x</name><devices />'
         b'<description>a "b"</description></domain>')


def test_formatting_only_is_no_diff_but_raw_is_kept() -> None:
    diff, raw = for_payload("xml", BEFORE, NOISE, "h", 10_000)
    assert diff == ""
    assert raw.startswith("--- before h") and "+<?xml" in raw


def test_one_element_change_is_one_hunk_of_that_element() -> None:
    after = NOISE.replace(b"</domain>", b"<numatune><memory mode='strict'/></numatune></domain>")
    diff, raw = for_payload("xml", BEFORE, after, "h", 10_000)
    changed = [line for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    assert changed == ["+  <numatune>", '+    <memory mode="strict"/>', "+  </numatune>"]
    assert raw and raw != diff


def test_json_normalised_and_unreadable_data_falls_back_to_raw() -> None:
    diff, raw = for_payload("json", b'{"b": 1, "a": [1,2]}', b'{"a":[1,2],"b":2}', "j", 10_000)
    assert [line for line in diff.splitlines() if line[:1] in "+-"][2:] == ['-  "b": 1',
                                                                            '+  "b": 2']
    diff, raw = for_payload("xml", b"<a>\n", b"<a>x\n", "bad", 10_000)
    assert raw == "" and diff.startswith("--- before bad\n")
    assert canonical("xml", b"<a><b/></a>") == b"<a>\n  <b/>\n</a>\n"


def test_namespace_prefixes_survive_canonicalisation() -> None:
    doc = (b"<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
           b"<qemu:commandline><qemu:arg value='-x'/></qemu:commandline></domain>")
    assert b"<qemu:arg value=\"-x\"/>" in (canonical("xml", doc) or b"")


def _record(chain: str, diff: str = "", raw: str = "") -> RunRecord:
    return RunRecord(chain, 1.0, "before_vm_start", None, "10_a", "c", "ok", 0, 0.1,
                     "", False, "", False, diff, "", raw)


def test_chain_input_kept_bounded_and_secrets_redacted(tmp_path: Path) -> None:
    store = RunRecords(tmp_path / "r.sqlite", inputs_kept=2)
    for i in range(3):
        chain = ChainInput.of("é" * 10, 9, {"numa": "strict:0", "db_password": "hunter2"},
                              {"extnet": "x"}, {"FROM_SNAPSHOT": "True"})
        store.add([_record(f"chain{i}", "d", "r")], chain)
    assert store.chain_input("chain0") is None  # only the newest 2 inputs are kept
    kept = store.chain_input("chain2")
    assert kept is not None
    assert kept.data == "é" * 4 and kept.data_truncated  # cut on a character boundary
    assert kept.vm_props == {"numa": "strict:0", "db_password": REDACTED}
    assert kept.redacted() == ["db_password"] and kept.extras == {"FROM_SNAPSHOT": "True"}
    # A chain id prefix, as the history table shows it, finds the chain.
    [run] = store.query(chain_id="chain2")
    assert (run.chain_id, run.raw_diff, run.origin) == ("chain2", "r", "agent")
    assert len(store.query(chain_id="chai")) == 3 == len(list(store.iter_query(chain_id="ch")))
    store.close()
    assert RunRecords(tmp_path / "r.sqlite", origin="offline").query()[0].origin == "offline"


def test_an_older_store_gains_the_raw_diff_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, chain_id TEXT NOT NULL, time REAL "
                 "NOT NULL, event TEXT NOT NULL, vm_id TEXT, script TEXT NOT NULL, checksum "
                 "TEXT NOT NULL, outcome TEXT NOT NULL, rc INTEGER, duration REAL NOT NULL, "
                 "stdout TEXT NOT NULL, stdout_truncated INTEGER NOT NULL, stderr TEXT NOT "
                 "NULL, stderr_truncated INTEGER NOT NULL, diff TEXT NOT NULL, message TEXT "
                 "NOT NULL)")
    conn.execute("INSERT INTO runs VALUES (1, 'c', 1, 'before_vm_start', NULL, 's', '', 'ok', "
                 "0, 0, '', 0, '', 0, 'old diff', '')")
    conn.commit()
    conn.close()
    store = RunRecords(path)
    store.add([_record("new", "d", "raw")])
    assert [(r.diff, r.raw_diff) for r in store.query()] == [("d", "raw"), ("old diff", "")]


def test_a_chain_makes_each_version_canonical_once(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = [BEFORE, NOISE, NOISE.replace(b"x", b"y"), NOISE.replace(b"x", b"z")]
    expected = [for_payload("xml", a, b, "h", 10_000)
                for a, b in ((versions[0], versions[1]), (versions[1], versions[2]),
                             (versions[1], versions[3]), (versions[3], b"[1]"))]
    seen: list[bytes] = []

    def counting(kind: str, data: bytes) -> bytes | None:
        seen.append(data)
        return canonical(kind, data)

    monkeypatch.setattr(diffs, "canonical", counting)
    cache = CanonicalCache()
    # v1 kept, v2 refused (the next hook is given v1 again), v3 kept, then not XML.
    got = [for_payload("xml", versions[0], versions[1], "h", 10_000, cache),
           for_payload("xml", bytes(bytearray(versions[1])), versions[2], "h", 10_000, cache),
           for_payload("xml", versions[1], versions[3], "h", 10_000, cache),
           for_payload("xml", versions[3], b"[1]", "h", 10_000, cache)]
    assert got == expected
    assert seen == [versions[0], versions[1], versions[2], versions[3], b"[1]"]
    # The kind is part of the key: the same bytes as JSON are read again.
    assert cache.canonical("json", b"[1]") == b"[\n  1\n]\n" and seen[-1] == b"[1]"
    assert len(seen) == 6


def _naive_prefix(a: bytes, b: bytes) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=12), st.binary(max_size=12),
       st.binary(max_size=40), st.sampled_from([1, 3, 8, 1 << 16]))
def test_common_head_and_tail_are_those_byte_by_byte(head: bytes, x: bytes, y: bytes,
                                                     tail: bytes, block: int) -> None:
    a, b = head + x + tail, head + y + tail
    with mock.patch.object(diffs, "_BLOCK", block):
        prefix = diffs._common_prefix(a, b)
        limit = min(len(a), len(b)) - prefix
        suffix = diffs._common_suffix(a, b, limit)
    assert prefix == _naive_prefix(a, b)
    assert suffix == min(_naive_prefix(a[::-1], b[::-1]), limit)
