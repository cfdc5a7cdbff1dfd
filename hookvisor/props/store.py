"""SQLite store of definitions: one text value per (key, cluster version).

A value is kept whole, as one row, the way engine-config keeps it: setting a
key replaces the row in one transaction, so a reader sees the old value or the
new one, never a mix. WAL lets readers go on while a value is replaced.
Connections are per thread (sqlite3 objects must not be shared unguarded).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS property_values (
    key        TEXT NOT NULL,
    version    TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (key, version)
)
"""


@dataclass(frozen=True)
class StoredValue:
    key: str
    version: str
    value: str
    updated_at: str


class PropertyStore:
    """Reads never create the file: `hookvisor config -g` on a fresh host writes nothing."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._ready = False
        self._ready_lock = threading.Lock()

    def get(self, key: str, version: str) -> str | None:
        conn = self._reader()
        if conn is None:
            return None
        row = conn.execute(
            "SELECT value FROM property_values WHERE key = ? AND version = ?", (key, version)
        ).fetchone()
        return None if row is None else str(row[0])

    def get_many(self, keys: list[str], version: str) -> dict[str, str]:
        """Values of several keys as of one moment (one read transaction)."""
        conn = self._reader()
        if conn is None:
            return {}
        with _read_transaction(conn):
            out: dict[str, str] = {}
            for key in keys:
                row = conn.execute(
                    "SELECT value FROM property_values WHERE key = ? AND version = ?",
                    (key, version),
                ).fetchone()
                if row is not None:
                    out[key] = str(row[0])
            return out

    def all(self, key: str | None = None) -> list[StoredValue]:
        conn = self._reader()
        if conn is None:
            return []
        sql = "SELECT key, version, value, updated_at FROM property_values"
        args: tuple[str, ...] = ()
        if key is not None:
            sql += " WHERE key = ?"
            args = (key,)
        return [StoredValue(str(k), str(v), str(val), str(at))
                for k, v, val, at in conn.execute(sql + " ORDER BY key, version", args)]

    def set(self, key: str, version: str, value: str) -> None:
        conn = self._writer()
        # IMMEDIATE takes the write lock up front: two setters serialize
        # instead of one failing on lock upgrade.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO property_values (key, version, value) VALUES (?, ?, ?) "
                "ON CONFLICT (key, version) DO UPDATE SET value = excluded.value, "
                "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                (key, version, value),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _reader(self) -> sqlite3.Connection | None:
        if not self._ready and not self.path.exists():
            return None
        return self._connection()

    def _writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self._connection()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are exactly the BEGINs we write.
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 10000")
            with self._ready_lock:
                if not self._ready:
                    _set_up(conn)
                    self._ready = True
            self._local.conn = conn
        return conn


def _set_up(conn: sqlite3.Connection, patience: float = 10.0) -> None:
    """WAL mode and the schema, once per store.

    Switching a new file to WAL needs it to itself, and SQLite answers a
    concurrent switch "database is locked" at once rather than through the busy
    timeout: several processes opening a new store together retry here.
    """
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(_SCHEMA)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


@contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT around reads so that they share one snapshot."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")
