"""Durable sessions: the store, the journal's ack-after-commit rule, restarts, faults."""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import sqlite3
import sys
from collections.abc import Callable

import pytest
import trio
import trio.testing

from genesis_trio import (
    CloseCode,
    Connected,
    Disconnected,
    LinkEvent,
    TranscendentalExternalWebSocket,
    TranscendentalWebSocket,
    serve_hub,
)
from genesis_trio.stores import (
    MemoryStore,
    RedisStore,
    SessionRow,
    SessionStore,
    SQLiteStore,
    StoreBatch,
    StoredEntry,
    StoreError,
)
from genesis_trio.testing import DeliveryChecker, MemoryHub, start_memory_hub

from .support.redis import redis_cluster, redis_server


def row(sid: str, **changes: object) -> SessionRow:
    fields: dict[str, object] = {
        "sid": sid,
        "component_id": "c-" + sid,
        "epoch": 1,
        "received": 0,
        "last_seq": 0,
        "acked": 0,
        "truncated": False,
        "topics": (),
        "disconnected_at": None,
    }
    fields.update(changes)
    return SessionRow(**fields)  # type: ignore[arg-type]


# -- the batch and the stores ----------------------------------------------------------


def test_batch_delete_and_rewrite_discard_earlier_changes() -> None:
    batch = StoreBatch()
    batch.upsert(row("a"))
    batch.append("a", StoredEntry(1, 10, 0.0))
    batch.trim("a", 1)
    batch.delete("a")
    assert batch.deletes == {"a"}
    assert not batch.sessions
    assert not batch.appends
    assert not batch.trims
    batch.append("b", StoredEntry(1, 11, 0.0))
    batch.rewrite("b", [StoredEntry(1, 12, 0.0)])
    batch.append("b", StoredEntry(2, 13, 0.0))
    assert batch.rewrites == {"b": [StoredEntry(1, 12, 0.0)]}
    assert batch.appends == {"b": [StoredEntry(2, 13, 0.0)]}
    later = StoreBatch()
    later.delete("b")
    later.upsert(row("c", received=5))
    batch.absorb(later)
    assert "b" not in batch.rewrites
    assert "b" not in batch.appends
    assert batch.sessions["c"].received == 5
    assert batch.deletes == {"a", "b"}


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis", "redis-cluster"])
async def test_store_round_trip(kind: str, tmp_path: pathlib.Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = ""
        if kind == "redis":
            url = (await stack.enter_async_context(redis_server())).url
        elif kind == "redis-cluster":  # three shards: every key of a prefix in one slot
            url = (await stack.enter_async_context(redis_cluster())).url("rt")
        await _round_trip(kind, tmp_path, lambda: url)


async def _round_trip(kind: str, tmp_path: pathlib.Path, url: Callable[[], str]) -> None:
    def make() -> SessionStore:
        if kind.startswith("redis"):
            return RedisStore(url(), prefix="rt")
        return memory if kind == "memory" else SQLiteStore(tmp_path / "s.sqlite3")

    memory = MemoryStore()
    store = make()
    assert (await store.open()).sessions == ()
    batch = StoreBatch()
    batch.upsert(row("a", received=3, last_seq=3, topics=("t1", "t2")))
    for seq in (1, 2, 3):
        batch.message(100 + seq, b"\x81\xa4type\xa1x")
        batch.append("a", StoredEntry(seq, 100 + seq, 1000.0 + seq))
    batch.upsert(row("b"))
    await store.write(batch)
    trim = StoreBatch()
    trim.trim("a", 1)
    trim.delete("b")
    await store.write(trim)
    await store.aclose()
    again = make()
    state = await again.open()
    assert len(state.sessions) == 1
    loaded = state.sessions[0]
    assert loaded.row == row("a", received=3, last_seq=3, topics=("t1", "t2"))
    assert [e.seq for e in loaded.entries] == [2, 3]
    assert set(state.messages) == {102, 103}  # 101 is no log's any more
    assert await again.compact() == 1  # so compaction drops it
    await again.aclose()
    await again.aclose()  # idempotent


async def test_sqlite_refuses_corrupt_and_unwritable_files(tmp_path: pathlib.Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        await SQLiteStore(corrupt).open()
    with pytest.raises(StoreError, match="does not exist"):
        await SQLiteStore(tmp_path / "missing" / "x.sqlite3").open()
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(StoreError):
            await SQLiteStore(locked / "x.sqlite3").open()


async def test_sqlite_full_disk_applies_nothing(tmp_path: pathlib.Path) -> None:
    store = SQLiteStore(tmp_path / "small.sqlite3", max_pages=40)
    await store.open()
    batch = StoreBatch()
    batch.upsert(row("a", last_seq=2000))
    for seq in range(1, 2001):
        batch.message(seq, os.urandom(200))
        batch.append("a", StoredEntry(seq, seq, 0.0))
    with pytest.raises(StoreError, match="full"):
        await store.write(batch)
    await store.aclose()
    state = await SQLiteStore(tmp_path / "small.sqlite3").open()
    assert state.sessions == ()  # the failed transaction left nothing behind


async def test_sqlite_failed_delete_is_not_forgotten_on_retry(tmp_path: pathlib.Path) -> None:
    """A batch that deletes A fails inside its transaction; retried, A must be gone."""
    path = tmp_path / "retry.sqlite3"
    store = SQLiteStore(path, max_pages=40)
    await store.open()
    first = StoreBatch()
    first.upsert(row("a", last_seq=1))
    first.append("a", StoredEntry(1, 0, 0.0, b"\x81\xa4type\xa1x"))
    await store.write(first)
    doomed = StoreBatch()
    doomed.delete("a")
    doomed.upsert(row("b", last_seq=400))
    for seq in range(1, 401):  # far more than 40 pages: the transaction fails after the delete
        doomed.append("b", StoredEntry(seq, 0, 0.0, os.urandom(400)))
    with pytest.raises(StoreError, match="full"):
        await store.write(doomed)
    retry = StoreBatch()  # what the journal retries: the delete, without the bulk
    retry.delete("a")
    await store.write(retry)
    await store.aclose()
    reopened = SQLiteStore(path)
    state = await reopened.open()
    assert [s.row.sid for s in state.sessions] == []
    await reopened.aclose()


# -- the hub with a store, on the mock clock ------------------------------------------


class Switch:
    """A stream factory whose target hub can be swapped (a restart)."""

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub

    async def __call__(self, host: str, port: int) -> trio.abc.Stream:
        return await self.hub.open_stream()


async def test_sessions_survive_a_hub_restart(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    checker = DeliveryChecker()
    events: list[LinkEvent] = []
    async with trio.open_nursery() as outer:
        first = trio.open_nursery()
        n1 = await first.__aenter__()
        hub1 = await start_memory_hub(n1, store=store)
        switch = Switch(hub1)
        a = TranscendentalWebSocket(
            "ws://x/ws", "a", stream_factory=switch, on_link_event=events.append
        )
        b = TranscendentalWebSocket("ws://x/ws", "b", stream_factory=switch)
        await outer.start(_run_client, a)
        await outer.start(_run_client, b)
        for n in range(100):
            await a.send("b", "n", n)
            checker.sent("a>b", n)
        for _ in range(40):
            checker.delivered("a>b", (await b.receive()).data)
        await a.flush()  # acknowledged by hub 1 = stored by hub 1
        n1.cancel_scope.cancel()
        await first.__aexit__(None, None, None)
        async with trio.open_nursery() as n2:
            hub2 = await start_memory_hub(n2, store=store)
            switch.hub = hub2
            assert hub2.hub.statistics().sessions == 2
            for n in range(100, 150):
                await a.send("b", "n", n)
                checker.sent("a>b", n)
            for _ in range(110):
                checker.delivered("a>b", (await b.receive()).data)
            resumed = [e for e in events if isinstance(e, Connected) and not e.first]
            assert resumed
            assert all(e.recovered for e in resumed)
            await a.aclose()
            await b.aclose()
            n2.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    report = checker.report()
    assert report.ok, report
    assert report.delivered == 150


async def _run_client(ws: TranscendentalWebSocket, *, task_status: trio.TaskStatus[None]) -> None:
    await ws.connect()
    task_status.started()
    await ws.run()


async def test_nothing_unstored_is_acknowledged_and_outage_closes_4006(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    mhub = await start_memory_hub(nursery, store=store, store_outage_timeout=10.0)
    events: list[LinkEvent] = []
    store_down = trio.Event()

    def on_event(event: LinkEvent) -> None:
        events.append(event)
        if isinstance(event, Disconnected) and event.code == CloseCode.STORE_UNAVAILABLE:
            store_down.set()

    async with (
        mhub.client("a", on_link_event=on_event) as a,
        mhub.client("b") as b,
    ):
        await a.send("b", "n", 0)
        await a.flush()
        assert (await b.receive()).data == 0
        store.fail_writes = 10**9  # the disk is full from now on
        await a.send("b", "n", 1)
        with trio.move_on_after(8):
            await a.flush()
        assert a.statistics().pending == 1  # not acknowledged: it was not stored
        assert b.statistics().messages_received == 1  # nor delivered
        assert mhub.hub.statistics().store_healthy is False
        with trio.fail_after(30):
            await store_down.wait()
        assert mhub.hub.statistics().store_failures > 0
        store.fail_writes = 0  # space freed
        with trio.fail_after(60):
            await a.flush()
        assert (await b.receive()).data == 1
        assert mhub.hub.statistics().store_healthy is True
    assert any(isinstance(e, Connected) and not e.first and e.recovered for e in events)


async def test_abandoned_session_expires_even_across_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with trio.open_nursery() as n1:
        hub1 = await start_memory_hub(n1, store=store, session_expiry=60.0)
        async with hub1.client("gone") as gone:
            await gone.send("gone", "x", 1)
            await gone.flush()
            sid = gone.session_id
            await gone.aclose(end_session=False)
        n1.cancel_scope.cancel()
    assert len(store.rows) == 1
    async with trio.open_nursery() as n2:
        hub2 = await start_memory_hub(n2, store=store, session_expiry=60.0)
        await trio.sleep(120)  # virtual time: the session is abandoned past its expiry
        assert hub2.hub.statistics().sessions_expired == 1
        assert store.rows == {}  # forgotten in the store too
        events: list[LinkEvent] = []
        async with hub2.client("gone", on_link_event=events.append) as back:
            assert back.session_id != sid
        n2.cancel_scope.cancel()


async def test_hub_with_store_refuses_to_start_on_a_bad_file(
    nursery: trio.Nursery, tmp_path: pathlib.Path
) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"garbage" * 1000)
    hub = TranscendentalExternalWebSocket(store=SQLiteStore(bad))
    with pytest.raises(BaseExceptionGroup) as info:
        await nursery.start(functools.partial(serve_hub, hub, port=0))
    assert info.group_contains(StoreError)


async def test_cli_refuses_to_start_on_corrupt_or_unwritable_store(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"garbage" * 1000)
    for spec in (f"sqlite:{bad}", f"sqlite:{tmp_path / 'nope' / 'x.sqlite3'}"):
        result = await trio.run_process(
            [sys.executable, "-m", "genesis_trio", "serve", "--port", "0", "--store", spec],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 3
        assert b"cannot start" in result.stderr
        assert b"Traceback" not in result.stderr


def test_sqlite_file_is_wal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "w.sqlite3"

    async def open_it() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.aclose()

    trio.run(open_it)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_acks_wait_for_the_sqlite_commit(
    nursery: trio.Nursery, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "hub.sqlite3"
    hub = TranscendentalExternalWebSocket(store=SQLiteStore(path))
    info = await nursery.start(functools.partial(serve_hub, hub, port=0))
    async with (
        TranscendentalWebSocket(info.ws_url, "a") as a,
        TranscendentalWebSocket(info.ws_url, "b") as b,
    ):
        for n in range(500):
            await a.send("b", "n", n)
        await a.flush()
        # Everything acknowledged is in the file, readable by another connection now.
        db = sqlite3.connect(path)
        (received,) = db.execute("SELECT received FROM sessions WHERE component_id='a'").fetchone()
        assert received == 500
        got = [(await b.receive()).data for _ in range(500)]
        assert got == list(range(500))
        stats = hub.statistics()
        assert stats.store == f"sqlite:{path}"
        assert stats.store_commits >= 1
        assert stats.store_rows_written >= 500  # counted per log entry (bodies inline)


_SCHEMA_3 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    key INTEGER PRIMARY KEY, sid TEXT NOT NULL UNIQUE, component_id TEXT NOT NULL,
    epoch INTEGER NOT NULL, received INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    acked INTEGER NOT NULL, truncated INTEGER NOT NULL, topics TEXT NOT NULL,
    disconnected_at REAL, owner TEXT
);
CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE log (
    key INTEGER NOT NULL, seq INTEGER NOT NULL, msg_id INTEGER NOT NULL, body BLOB,
    stamp REAL NOT NULL, PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE INDEX log_msg ON log (msg_id) WHERE msg_id > 0;
INSERT INTO meta VALUES ('schema', '3');
INSERT INTO sessions VALUES (7, 'sid-a', 'a', 2, 4, 3, 1, 0, '["t"]', 1000.5, 'alice');
INSERT INTO messages VALUES (50, x'81a474797065a178'), (51, x'81a474797065a179');
INSERT INTO log VALUES (7, 2, 50, NULL, 1001.0), (7, 3, 0, x'81a1619101', 1002.0);
"""


async def test_sqlite_schema_3_file_is_migrated_to_chunks(tmp_path: pathlib.Path) -> None:
    """A file written by the previous release (one log row per message) opens as it was."""
    path = tmp_path / "v3.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_SCHEMA_3)
    store = SQLiteStore(path)
    state = await store.open()
    (session,) = state.sessions
    assert session.row == row(
        "sid-a", component_id="a", epoch=2, received=4, last_seq=3, acked=1,
        topics=("t",), disconnected_at=1000.5, owner="alice",
    )  # fmt: skip
    assert session.entries == (
        StoredEntry(2, 50, 1001.0),
        StoredEntry(3, 0, 1002.0, b"\x81\xa1a\x91\x01"),
    )
    assert state.messages == {50: b"\x81\xa4type\xa1x"}  # 51: no log references it
    # New entries go on after the migrated ones, and the file says schema 4.
    batch = StoreBatch()
    batch.append("sid-a", StoredEntry(4, 0, 1003.0, b"\x80"))
    batch.trim("sid-a", 2)
    await store.write(batch)
    assert await store.compact() == 2  # 50 is trimmed now, 51 never was referenced
    await store.aclose()
    state = await SQLiteStore(path).open()
    assert [e.seq for e in state.sessions[0].entries] == [3, 4]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("4",)
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert "log" not in tables
        assert {"chunks", "trims"} <= tables


async def test_sqlite_commit_is_a_few_rows_whatever_it_carries(tmp_path: pathlib.Path) -> None:
    """One chunk row per session per commit: 1,000 appends, 2 chunk rows, loaded exactly."""
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    batch = StoreBatch()
    batch.upsert(row("a", last_seq=1000))
    for seq in range(1, 1001):
        batch.append("a", StoredEntry(seq, 0, 1000.0 + seq, b"\x81\xa1n\xcd" + seq.to_bytes(2)))
    await store.write(batch)
    more = StoreBatch()
    more.message(9, b"\x81\xa1x\x01")
    more.append("a", StoredEntry(1001, 9, 3000.0))
    more.trim("a", 600)
    await store.write(more)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM chunks").fetchone() == (2,)
    await store.aclose()
    state = await SQLiteStore(path).open()
    entries = state.sessions[0].entries
    assert [e.seq for e in entries] == list(range(601, 1002))
    assert entries[0] == StoredEntry(601, 0, 1601.0, b"\x81\xa1n\xcd" + (601).to_bytes(2))
    assert state.messages == {9: b"\x81\xa1x\x01"}


async def test_sqlite_commits_run_inline_until_one_is_slow(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NORMAL commits skip the worker thread; a slow one sends the next ones there."""
    from genesis_trio.stores import _sqlite

    def one(seq: int) -> StoreBatch:
        batch = StoreBatch()
        batch.upsert(row("a", last_seq=seq))
        batch.append("a", StoredEntry(seq, 0, 1.0, b"\x80"))
        return batch

    store = SQLiteStore(tmp_path / "i.sqlite3")
    await store.open()
    await store.write(one(1))
    assert store.inline_commits == 1
    monkeypatch.setattr(_sqlite, "INLINE_LIMIT", 0.0)  # every commit now counts as slow
    await store.write(one(2))  # inline, measured slow
    await store.write(one(3))  # so this one runs in the worker thread
    assert store.inline_commits == 2
    monkeypatch.setattr(_sqlite, "INLINE_LIMIT", 60.0)
    await store.write(one(4))  # the worker thread's commit was quick: back inline
    await store.write(one(5))
    assert store.inline_commits == 3
    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", 2)
    assert store.checkpoints == 0
    await store.write(one(6))
    await store.write(one(7))
    assert store.checkpoints >= 1  # in the worker thread, after the commit
    await store.aclose()
    assert [
        e.seq for e in (await SQLiteStore(tmp_path / "i.sqlite3").open()).sessions[0].entries
    ] == list(range(1, 8))
    full = SQLiteStore(tmp_path / "f.sqlite3", synchronous="FULL")
    await full.open()
    await full.write(one(1))
    assert full.inline_commits == 0  # FULL waits for the disk: never on the Trio thread
    await full.aclose()
