"""SQLite (WAL) store of every script run.

Written once per chain, in one transaction, so recording costs a chain one
commit rather than one per script. Retention is bounded by count: the newest
`limit` runs are kept.

Beside the runs, a chain's input (its data, cut at the input cap, and its
custom properties and extras) is kept for the newest `inputs_kept` chains, so
that `hookvisor hooks replay` can run the chain again on what it had. The
agent's own environment is never kept: it may hold secrets, and a replay runs
in the replayer's. Properties whose name says secret are kept as redacted.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("ok", "failed", "timeout", "invalid-output", "skipped")
FAILED_OUTCOMES = ("failed", "timeout", "invalid-output")
DEFAULT_LIMIT = 10_000
RECORDS_FILE = "hookruns.sqlite"
# `hookvisor hooks run` records here, apart from the agent's runs.
OFFLINE_RECORDS_FILE = "hookruns-offline.sqlite"
DEFAULT_INPUTS_KEPT = 200
REDACTED = "(redacted)"
# Property names that say they carry a secret: their values are not kept.
_SECRET_NAME = re.compile(r"pass|secret|token|key|cred|auth", re.IGNORECASE)
_MIN_SECRET = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    chain_id TEXT NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    vm_id TEXT,
    script TEXT NOT NULL,
    checksum TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rc INTEGER,
    duration REAL NOT NULL,
    stdout TEXT NOT NULL,
    stdout_truncated INTEGER NOT NULL,
    stderr TEXT NOT NULL,
    stderr_truncated INTEGER NOT NULL,
    diff TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_vm ON runs (vm_id, id);
CREATE INDEX IF NOT EXISTS runs_event ON runs (event, id);
CREATE INDEX IF NOT EXISTS runs_chain ON runs (chain_id);
CREATE TABLE IF NOT EXISTS chains (
    id INTEGER PRIMARY KEY,
    chain_id TEXT NOT NULL UNIQUE,
    input TEXT NOT NULL,
    input_truncated INTEGER NOT NULL,
    env TEXT NOT NULL
);
"""
# Columns added after the first release: (name, declaration), added on open.
_ADDED = (("raw_diff", "TEXT NOT NULL DEFAULT ''"),)

_COLUMNS = (
    "chain_id", "time", "event", "vm_id", "script", "checksum", "outcome", "rc",
    "duration", "stdout", "stdout_truncated", "stderr", "stderr_truncated", "diff", "message",
    "raw_diff",
)


_TEXTS = frozenset({"stdout", "stderr", "diff", "raw_diff", "message"})
# A chain id given in full, or its first characters (as the history table shows):
# a range on the index, [prefix, prefix + the highest code point).
_CHAIN_MATCH = "chain_id >= ? AND chain_id < ?"


def _chain_range(prefix: str) -> tuple[str, str]:
    return prefix, prefix + "\U0010ffff"


def _filter(vm_id: str | None, event: str | None, failed: bool,
            chain_id: str | None) -> tuple[list[str], list[Any]]:
    """The WHERE terms (joined by AND) and their arguments that query and iter_query share."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("vm_id", vm_id), ("event", event)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if chain_id is not None:
        where.append(_CHAIN_MATCH)
        args.extend(_chain_range(chain_id))
    if failed:
        where.append(f"outcome IN ({', '.join('?' for _ in FAILED_OUTCOMES)})")
        args.extend(FAILED_OUTCOMES)
    return where, args


@dataclass(frozen=True)
class RunRecord:
    chain_id: str
    time: float  # start, seconds since the epoch
    event: str
    vm_id: str | None
    script: str
    checksum: str
    outcome: str
    rc: int | None
    duration: float
    stdout: str
    stdout_truncated: bool
    stderr: str
    stderr_truncated: bool
    diff: str  # unified diff of the data when the script changed it, else ""
    message: str  # why it failed or was skipped, beyond rc and stderr
    # The diff of the bytes as they were, when `diff` (of the canonical forms) differs.
    raw_diff: str = ""
    id: int | None = None
    # "agent": the agent ran it; "offline": `hookvisor hooks run` (another store).
    origin: str = "agent"

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChainInput:
    """What a chain ran on, for a replay: its data and its custom properties."""

    data: str
    data_truncated: bool = False
    vm_props: dict[str, str] = field(default_factory=dict)
    device_props: dict[str, str] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)
    # Values of secret-named properties: blanked in every text recorded with the
    # chain (data, diffs, outputs); never stored themselves.
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def blank(self, text: str) -> str:
        for value in self.secrets:
            text = text.replace(value, REDACTED)
        return text

    @classmethod
    def of(cls, data: str, cap: int, vm_props: Mapping[str, object] | None = None,
           device_props: Mapping[str, object] | None = None,
           extras: Mapping[str, str] | None = None) -> ChainInput:
        # The data carries the properties too (the domain's metadata): a secret's
        # value is blanked there as well. Short values would blank unrelated text.
        secrets = tuple(sorted({str(v) for props in (vm_props, device_props)
                                for k, v in (props or {}).items()
                                if _SECRET_NAME.search(str(k)) and len(str(v)) >= _MIN_SECRET},
                               key=len, reverse=True))
        for value in secrets:
            data = data.replace(value, REDACTED)
        raw = data.encode("utf-8")
        cut = len(raw) > cap
        if cut:
            data = raw[:cap].decode("utf-8", errors="ignore")

        def kept(props: Mapping[str, object] | None) -> dict[str, str]:
            return {str(k): (REDACTED if _SECRET_NAME.search(str(k)) else str(v))
                    for k, v in (props or {}).items()}

        return cls(data, cut, kept(vm_props), kept(device_props), dict(extras or {}), secrets)

    def redacted(self) -> list[str]:
        return sorted(k for props in (self.vm_props, self.device_props)
                      for k, v in props.items() if v == REDACTED)


def _private(path: Path) -> None:
    """The database readable by its owner only: it holds hooks' outputs and the
    domain XML diffs (a VNC password, a secret a hook printed). SQLite gives
    its -wal and -shm files the database's mode; ones an older agent left are
    closed too."""
    for name, flags in ((str(path), os.O_RDWR | os.O_CREAT), (f"{path}-wal", os.O_RDONLY),
                        (f"{path}-shm", os.O_RDONLY)):
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


class RunRecords:
    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT, origin: str = "agent",
                 inputs_kept: int = DEFAULT_INPUTS_KEPT) -> None:
        if limit < 1:
            raise ValueError("records limit must be at least 1")
        self.path = Path(path)
        self.limit = limit
        self.origin = origin
        self.inputs_kept = inputs_kept
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private(self.path)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a crash may lose the last chains' records, never corrupt.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            for name, declaration in _ADDED:
                if name not in have:
                    try:
                        conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")
                    except sqlite3.OperationalError as e:
                        if "duplicate column" not in str(e):  # another process was first
                            raise
            self._conn = conn
        return self._conn

    def add(self, runs: Iterable[RunRecord], chain: ChainInput | None = None) -> None:
        rows = [tuple(getattr(r, c) for c in _COLUMNS) for r in runs]
        if chain is not None and chain.secrets:
            rows = [tuple(chain.blank(v) if isinstance(v, str) and c in _TEXTS else v
                          for c, v in zip(_COLUMNS, row, strict=True)) for row in rows]
        if not rows:
            return
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", rows
                )
                # Ids only grow (the newest row is never deleted), so the
                # newest `limit` runs are those above last id - limit.
                last = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
                conn.execute("DELETE FROM runs WHERE id <= ?", (last - self.limit,))
                if chain is not None and self.inputs_kept > 0:
                    env = {"vm_props": chain.vm_props, "device_props": chain.device_props,
                           "extras": chain.extras}
                    conn.execute("INSERT OR REPLACE INTO chains (chain_id, input, "
                                 "input_truncated, env) VALUES (?, ?, ?, ?)",
                                 (rows[0][0], chain.data, int(chain.data_truncated),
                                  json.dumps(env)))
                    top = conn.execute("SELECT max(id) FROM chains").fetchone()[0]
                    conn.execute("DELETE FROM chains WHERE id <= ?", (top - self.inputs_kept,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _record(self, row: Sequence[Any]) -> RunRecord:
        """A runs row (id first, then _COLUMNS) as a RunRecord; SQLite keeps booleans as ints."""
        values = dict(zip(_COLUMNS, row[1:], strict=True))
        values["stdout_truncated"] = bool(values["stdout_truncated"])
        values["stderr_truncated"] = bool(values["stderr_truncated"])
        return RunRecord(id=row[0], origin=self.origin, **values)

    def query(
        self,
        *,
        vm_id: str | None = None,
        event: str | None = None,
        failed: bool = False,
        chain_id: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Newest first."""
        where, args = _filter(vm_id, event, failed, chain_id)
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._connect().execute(sql, args).fetchall()
        return [self._record(row) for row in rows]

    def iter_query(
        self,
        *,
        vm_id: str | None = None,
        event: str | None = None,
        failed: bool = False,
        chain_id: str | None = None,
        before: int | None = None,
        chunk: int = 8,
    ) -> Iterator[RunRecord]:
        """Newest first, ids below `before` (a cursor), read `chunk` rows at a time.

        Only the rows a caller takes are read (each up to the output caps), and
        the lock is held for one chunk's read, never while the caller works.
        """
        where, args = _filter(vm_id, event, failed, chain_id)
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM runs WHERE id < ?"
        if where:
            sql += " AND " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        cursor = before if before is not None else 2**63 - 1
        while True:
            with self._lock:
                rows = self._connect().execute(sql, [cursor, *args, chunk]).fetchall()
            for row in rows:
                yield self._record(row)
            if len(rows) < chunk:
                return
            cursor = rows[-1][0]

    def chain_input(self, chain_id: str) -> ChainInput | None:
        """The input kept for the chain, None if not kept (older than inputs_kept)."""
        with self._lock:
            row = self._connect().execute(
                "SELECT input, input_truncated, env FROM chains WHERE chain_id = ?",
                (chain_id,)).fetchone()
        if row is None:
            return None
        env = json.loads(row[2])
        return ChainInput(row[0], bool(row[1]), env.get("vm_props", {}),
                          env.get("device_props", {}), env.get("extras", {}))

    def count(self) -> int:
        with self._lock:
            row = self._connect().execute("SELECT COUNT(*) FROM runs").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
