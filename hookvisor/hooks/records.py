"""SQLite (WAL) store of every script run.

Written once per chain, in one transaction, so recording costs a chain one
commit rather than one per script. Retention is bounded by count: the newest
`limit` runs are kept.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OUTCOMES = ("ok", "failed", "timeout", "invalid-output", "skipped")
FAILED_OUTCOMES = ("failed", "timeout", "invalid-output")
DEFAULT_LIMIT = 10_000
RECORDS_FILE = "hookruns.sqlite"

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
"""

_COLUMNS = (
    "chain_id", "time", "event", "vm_id", "script", "checksum", "outcome", "rc",
    "duration", "stdout", "stdout_truncated", "stderr", "stderr_truncated", "diff", "message",
)


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
    id: int | None = None

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("records limit must be at least 1")
        self.path = Path(path)
        self.limit = limit
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
            self._conn = conn
        return self._conn

    def add(self, runs: Iterable[RunRecord]) -> None:
        rows = [tuple(getattr(r, c) for c in _COLUMNS) for r in runs]
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

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
        where: list[str] = []
        args: list[Any] = []
        if vm_id is not None:
            where.append("vm_id = ?")
            args.append(vm_id)
        if event is not None:
            where.append("event = ?")
            args.append(event)
        if chain_id is not None:
            where.append("chain_id = ?")
            args.append(chain_id)
        if failed:
            where.append(f"outcome IN ({', '.join('?' for _ in FAILED_OUTCOMES)})")
            args.extend(FAILED_OUTCOMES)
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._connect().execute(sql, args).fetchall()
        out = []
        for row in rows:
            values = dict(zip(_COLUMNS, row[1:], strict=True))
            values["stdout_truncated"] = bool(values["stdout_truncated"])
            values["stderr_truncated"] = bool(values["stderr_truncated"])
            out.append(RunRecord(id=row[0], **values))
        return out

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
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("vm_id", vm_id), ("event", event), ("chain_id", chain_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if failed:
            where.append(f"outcome IN ({', '.join('?' for _ in FAILED_OUTCOMES)})")
            args.extend(FAILED_OUTCOMES)
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM runs WHERE id < ?"
        if where:
            sql += " AND " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        cursor = before if before is not None else 2**63 - 1
        while True:
            with self._lock:
                rows = self._connect().execute(sql, [cursor, *args, chunk]).fetchall()
            for row in rows:
                values = dict(zip(_COLUMNS, row[1:], strict=True))
                values["stdout_truncated"] = bool(values["stdout_truncated"])
                values["stderr_truncated"] = bool(values["stderr_truncated"])
                yield RunRecord(id=row[0], **values)
            if len(rows) < chunk:
                return
            cursor = rows[-1][0]

    def count(self) -> int:
        with self._lock:
            row = self._connect().execute("SELECT COUNT(*) FROM runs").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
