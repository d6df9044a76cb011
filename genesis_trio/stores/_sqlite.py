"""``SQLiteStore``: the embedded, durable session store (the default of ``serve``).

One file, WAL mode, one connection used from one worker thread at a time
(blocking calls never run on the Trio thread). Batches from the hub's
journal are written in a single transaction each (group commit), so
throughput holds however many messages a batch carries. With
``synchronous=NORMAL`` (the default) a committed batch survives the hub
process being killed; ``FULL`` also survives power loss, at a cost per commit.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson
import trio

from ._protocol import (
    SessionRow,
    StoreBatch,
    StoredEntry,
    StoredSession,
    StoredState,
    StoreError,
)

SCHEMA_VERSION: Final = 3
"""2 -> 3: sessions.owner (migrated in place, NULL for existing sessions)."""
T = TypeVar("T")

# Sessions get a small integer key: log rows are keyed (key, seq), so the
# index stays narrow. A message for one session is stored inline in its log
# row; one fanned out to several is stored once in ``messages`` and the log
# rows reference it (the partial index serves compaction only).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    key INTEGER PRIMARY KEY,
    sid TEXT NOT NULL UNIQUE,
    component_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    received INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    acked INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    topics TEXT NOT NULL,
    disconnected_at REAL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    key INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    msg_id INTEGER NOT NULL,
    body BLOB,
    stamp REAL NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS log_msg ON log (msg_id) WHERE msg_id > 0;
"""


class SQLiteStore:
    """A :class:`~genesis_trio._store.SessionStore` in one SQLite file.

    ``synchronous``: ``"NORMAL"`` (survives a killed process) or ``"FULL"``
    (also survives power loss). ``max_pages`` caps the file (SQLite's
    ``max_page_count``), which is also how tests simulate a full disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        max_pages: int | None = None,
        check_integrity: bool = True,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = os.fspath(path)
        self.name = f"sqlite:{self.path}"
        self._synchronous = synchronous.upper()
        self._max_pages = max_pages
        self._check_integrity = check_integrity
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._keys: dict[str, int] = {}  # sid -> key; touched only on the store's thread
        self._next_key = 1
        self._fresh: list[str] = []  # keys given out in the transaction in progress

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- opening ------------------------------------------------------------------

    async def open(self) -> StoredState:
        """Open or create the file, check it, and load every session."""
        return await self._run(self._open_sync)

    def _open_sync(self) -> StoredState:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"session store directory does not exist: {directory}")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open session store {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"session store {self.path}: cannot enable WAL (got {mode})")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=5000")
            if self._max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
            if self._check_integrity:
                verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise StoreError(f"session store {self.path} is corrupt: {verdict}")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) == 2:  # add the owner column; every session keeps none
                conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"session store {self.path} has schema {row[0]}, expected {SCHEMA_VERSION}"
                )
            state = self._load(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot use session store {self.path}: {exc}") from None
        except StoreError:
            conn.close()
            raise
        self._conn = conn
        return state

    def _load(self, conn: sqlite3.Connection) -> StoredState:
        entries: dict[int, list[StoredEntry]] = {}
        for key, seq, msg_id, body, stamp in conn.execute(
            "SELECT key, seq, msg_id, body, stamp FROM log ORDER BY key, seq"
        ):
            entries.setdefault(key, []).append(
                StoredEntry(seq, msg_id, stamp, None if body is None else bytes(body))
            )
        sessions = []
        for record in conn.execute(
            "SELECT key, sid, component_id, epoch, received, last_seq, acked, truncated, topics,"
            " disconnected_at, owner FROM sessions"
        ):
            key, sid, cid, epoch, received, last_seq, acked, truncated, topics, gone, owner = record
            row = SessionRow(
                sid=sid,
                component_id=cid,
                epoch=epoch,
                received=received,
                last_seq=last_seq,
                acked=acked,
                truncated=bool(truncated),
                topics=tuple(orjson.loads(topics)),
                disconnected_at=gone,
                owner=owner,
            )
            self._keys[sid] = key
            self._next_key = max(self._next_key, key + 1)
            sessions.append(StoredSession(row, tuple(entries.get(key, ()))))
        messages = {
            msg_id: bytes(body)
            for msg_id, body in conn.execute(
                "SELECT id, body FROM messages"
                " WHERE id IN (SELECT msg_id FROM log WHERE msg_id > 0)"
            )
        }
        return StoredState(tuple(sessions), messages)

    def _key(self, sid: str) -> int:
        key = self._keys.get(sid)
        if key is None:
            key = self._keys[sid] = self._next_key
            self._next_key += 1
            self._fresh.append(sid)
        return key

    # -- writing ------------------------------------------------------------------

    async def write(self, batch: StoreBatch) -> None:
        """Apply ``batch`` in one transaction (all or nothing)."""
        await self._run(self._write_sync, batch)

    def _write_sync(self, batch: StoreBatch) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError("session store is not open")
        self._fresh.clear()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._apply(conn, batch)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                    conn.execute("ROLLBACK")
                for sid in self._fresh:  # keys given out for rows that were not written
                    del self._keys[sid]
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"session store write failed: {exc}") from None
        for sid in batch.deletes:  # only now: a failed delete must find its key on retry
            self._keys.pop(sid, None)

    def _apply(self, conn: sqlite3.Connection, batch: StoreBatch) -> None:
        key = self._key
        if batch.deletes:
            gone = [(k,) for k in (self._keys.get(sid) for sid in batch.deletes) if k]
            conn.executemany("DELETE FROM sessions WHERE key = ?", gone)
            conn.executemany("DELETE FROM log WHERE key = ?", gone)
        if batch.messages:
            conn.executemany(
                "INSERT OR REPLACE INTO messages (id, body) VALUES (?, ?)", batch.messages.items()
            )
        insert = "INSERT OR REPLACE INTO log (key, seq, msg_id, body, stamp) VALUES (?, ?, ?, ?, ?)"
        for sid, entries in batch.rewrites.items():
            k = key(sid)
            conn.execute("DELETE FROM log WHERE key = ?", (k,))
            conn.executemany(insert, [(k, e.seq, e.msg_id, e.body, e.stamp) for e in entries])
        if batch.appends:
            rows = []
            for sid, entries in batch.appends.items():
                k = key(sid)
                rows += [(k, seq, msg_id, body, stamp) for seq, msg_id, stamp, body in entries]
            conn.executemany(insert, rows)
        if batch.trims:
            conn.executemany(
                "DELETE FROM log WHERE key = ? AND seq <= ?",
                [(key(sid), seq) for sid, seq in batch.trims.items()],
            )
        if batch.sessions:
            conn.executemany(
                "INSERT OR REPLACE INTO sessions (key, sid, component_id, epoch, received,"
                " last_seq, acked, truncated, topics, disconnected_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        key(r.sid),
                        r.sid,
                        r.component_id,
                        r.epoch,
                        r.received,
                        r.last_seq,
                        r.acked,
                        int(r.truncated),
                        orjson.dumps(list(r.topics)).decode(),
                        r.disconnected_at,
                        r.owner,
                    )
                    for r in batch.sessions.values()
                ],
            )

    async def compact(self) -> int:
        """Delete message bodies that no log references."""
        return await self._run(self._compact_sync)

    def _compact_sync(self) -> int:
        conn = self._conn
        if conn is None:
            return 0
        try:
            cursor = conn.execute(
                "DELETE FROM messages WHERE NOT EXISTS"
                " (SELECT 1 FROM log WHERE log.msg_id = messages.id AND log.msg_id > 0)"
            )
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise StoreError(f"session store compaction failed: {exc}") from None
        return int(cursor.rowcount)

    async def aclose(self) -> None:
        """Close the file (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
