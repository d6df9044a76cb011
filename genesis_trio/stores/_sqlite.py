"""``SQLiteStore``: the embedded, durable session store (the default of ``serve``).

One file, WAL mode, one connection used by one caller at a time. Batches from the hub's
journal are written in a single transaction each (group commit), so
throughput holds however many messages a batch carries: each session's
appends in a batch become one row (a *chunk*: the entries packed with
MessagePack in one C call), so a commit costs a few statements whatever it
carries. With
``synchronous=NORMAL`` (the default) a committed batch survives the hub
process being killed; ``FULL`` also survives power loss, at a cost per commit.

Where a commit runs: with ``NORMAL`` a commit only appends to the WAL (no
fsync), typically 50-200 µs, so it runs on the Trio thread itself, which
saves a thread round trip (~250 µs of latency on a busy core, and the GIL
handed back and forth per statement). Anything that may wait for the disk
runs in a worker thread: opening, compaction, WAL checkpoints (every
``CHECKPOINT_EVERY`` commits, with SQLite's automatic checkpoint turned off
so it never fsyncs on the Trio thread), every commit under ``FULL``, and
every commit after one took longer than ``INLINE_LIMIT`` until a commit in
the worker thread is quick again (a slow or stalled disk never holds up the
event loop for more than one commit).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack
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

INLINE_LIMIT: Final = 0.002
"""A commit slower than this (seconds) sends the next ones to the worker thread."""
CHECKPOINT_EVERY: Final = 256
"""Commits between WAL checkpoints (run in the worker thread; ~2-4 pages a commit)."""

SCHEMA_VERSION: Final = 4
"""2 -> 3: sessions.owner (NULL for existing sessions); 3 -> 4: one ``chunks`` row per
session per commit instead of one ``log`` row per message (both migrated in place)."""
T = TypeVar("T")

# Sessions get a small integer key. A session's log is a run of chunks, one
# per commit that appended to it: ``data`` is the entries packed as one
# MessagePack array of [seq, msg_id, stamp, body] (body nil: the message is
# shared, stored once in ``messages``; first..last: the seqs it holds;
# min_msg..max_msg: the shared message ids it references, 0 if none, for
# compaction). A chunk goes when its last entry is trimmed; ``trims`` keeps
# each log's trim point, below which a partly trimmed chunk's entries are dead.
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
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    key INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    min_msg INTEGER NOT NULL,
    max_msg INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_key ON chunks (key, last);
CREATE TABLE IF NOT EXISTS trims (key INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
"""
_INSERT_CHUNK = (
    "INSERT INTO chunks (key, first, last, min_msg, max_msg, data) VALUES (?, ?, ?, ?, ?, ?)"
)


def _chunk(key: int, entries: list[StoredEntry]) -> tuple[int, int, int, int, int, bytes]:
    """One chunk row: a session's entries of one commit, packed in one call."""
    ids = [e.msg_id for e in entries if e.msg_id]
    low, high = (min(ids), max(ids)) if ids else (0, 0)
    data = msgpack.packb(entries, use_bin_type=True)
    return key, entries[0].seq, entries[-1].seq, low, high, data


def _unchunk(data: bytes) -> list[StoredEntry]:
    return [StoredEntry(*e) for e in msgpack.unpackb(data, use_list=False)]


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
        self._inline = self._synchronous == "NORMAL"  # commits run on the Trio thread
        self._since_checkpoint = 0
        self.inline_commits = 0
        """Commits run on the Trio thread (the rest ran in the worker thread)."""
        self.checkpoints = 0
        """WAL checkpoints run (in the worker thread, after a commit)."""

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
            # Checkpoints run in the worker thread (write()); SQLite's own stays a backstop.
            conn.execute("PRAGMA wal_autocheckpoint=4000")
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
            elif int(row[0]) in (2, 3):
                _migrate(conn, int(row[0]))
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
        floors = dict(conn.execute("SELECT key, seq FROM trims"))
        entries: dict[int, list[StoredEntry]] = {}
        for key, data in conn.execute("SELECT key, data FROM chunks ORDER BY key, first"):
            floor = floors.get(key, 0)
            entries.setdefault(key, []).extend(e for e in _unchunk(data) if e.seq > floor)
        used = {e.msg_id for log in entries.values() for e in log if e.msg_id}
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
            for msg_id, body in conn.execute("SELECT id, body FROM messages")
            if msg_id in used
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
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            await self._run(self._write_and_checkpoint, batch)
        elif self._inline:
            async with self._limiter:  # never beside a compaction in the worker thread
                self._write_sync(batch)
                self.inline_commits += 1
            # The commit happened: yield, but let no cancellation say it did not.
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._run(self._write_sync, batch)

    def _write_and_checkpoint(self, batch: StoreBatch) -> None:
        self._write_sync(batch)
        conn = self._conn
        if conn is not None:
            # Housekeeping: the commit stands whatever happens here (a failure
            # must not make the journal retry it); the next checkpoint retries.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self.checkpoints += 1

    def _write_sync(self, batch: StoreBatch) -> None:
        started = time.perf_counter()
        try:
            self._commit(batch)
        finally:
            if self._synchronous == "NORMAL":
                self._inline = time.perf_counter() - started < INLINE_LIMIT

    def _commit(self, batch: StoreBatch) -> None:
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
            conn.executemany("DELETE FROM chunks WHERE key = ?", gone)
            conn.executemany("DELETE FROM trims WHERE key = ?", gone)
        if batch.messages:
            conn.executemany(
                "INSERT OR REPLACE INTO messages (id, body) VALUES (?, ?)", batch.messages.items()
            )
        if batch.rewrites:
            keys = {sid: key(sid) for sid in batch.rewrites}
            gone = [(k,) for k in keys.values()]
            conn.executemany("DELETE FROM chunks WHERE key = ?", gone)
            conn.executemany("DELETE FROM trims WHERE key = ?", gone)
            conn.executemany(
                _INSERT_CHUNK,
                [_chunk(keys[sid], e) for sid, e in batch.rewrites.items() if e],
            )
        if batch.appends:
            conn.executemany(
                _INSERT_CHUNK, [_chunk(key(sid), e) for sid, e in batch.appends.items() if e]
            )
        if batch.trims:
            trims = [(key(sid), seq) for sid, seq in batch.trims.items()]
            conn.executemany("DELETE FROM chunks WHERE key = ? AND last <= ?", trims)
            conn.executemany("INSERT OR REPLACE INTO trims (key, seq) VALUES (?, ?)", trims)
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
            # The ids live chunks may reference, as ranges (a partly trimmed chunk:
            # exactly those of its live entries); what lies between them goes.
            spans = conn.execute(
                "SELECT min_msg, max_msg FROM chunks LEFT JOIN trims USING (key)"
                " WHERE min_msg > 0 AND first > coalesce(seq, 0)"
            ).fetchall()
            for floor, data in conn.execute(
                "SELECT seq, data FROM chunks JOIN trims USING (key)"
                " WHERE min_msg > 0 AND first <= seq"
            ):
                spans += [(e.msg_id, e.msg_id) for e in _unchunk(data) if e.seq > floor]
            spans.sort()
            ranges: list[list[int]] = []
            for low, high in spans:
                if low == 0:
                    continue
                if ranges and low <= ranges[-1][1] + 1:
                    ranges[-1][1] = max(ranges[-1][1], high)
                else:
                    ranges.append([low, high])
            gaps, below = [], 0
            for low, high in ranges:
                gaps.append((below, low))
                below = high
            gaps.append((below, 1 << 62))
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany("DELETE FROM messages WHERE id > ? AND id < ?", gaps)
                dropped = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise StoreError(f"session store compaction failed: {exc}") from None
        return dropped

    async def aclose(self) -> None:
        """Close the file (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a schema 2 or 3 file to the current schema, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 2:  # add the owner column; every session keeps none
            conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")
        rows: dict[int, list[StoredEntry]] = {}
        for key, seq, msg_id, body, stamp in conn.execute(
            "SELECT key, seq, msg_id, body, stamp FROM log ORDER BY key, seq"
        ):
            rows.setdefault(key, []).append(
                StoredEntry(seq, msg_id, stamp, None if body is None else bytes(body))
            )
        conn.executemany(_INSERT_CHUNK, [_chunk(k, e) for k, e in rows.items()])
        conn.execute("DROP INDEX IF EXISTS log_msg")
        conn.execute("DROP TABLE log")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
