"""``RedisStore`` against a real ``redis-server`` (started by the test, stopped by PID).

The store contract (round trip, compaction) runs in test_store.py for every
store; here: what only a networked store can do wrong (outages, a full
server, URLs and credentials), and a hub on real sockets that keeps its
sessions in Redis through a hub restart and a Redis outage.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import pytest
import trio

from genesis_trio import (
    CloseCode,
    Connected,
    Disconnected,
    LinkEvent,
    TranscendentalWebSocket,
    backoff,
)
from genesis_trio.stores import RedisStore, SessionRow, StoreBatch, StoredEntry, StoreError
from genesis_trio.testing import DeliveryChecker, start_hub

from .support.processes import free_port
from .support.redis import redis_server


def row(sid: str, **changes: object) -> SessionRow:
    fields: dict[str, object] = {
        "sid": sid, "component_id": "c-" + sid, "epoch": 1, "received": 0, "last_seq": 0,
        "acked": 0, "truncated": False, "topics": (), "disconnected_at": None,
    }  # fmt: skip
    fields.update(changes)
    return SessionRow(**fields)  # type: ignore[arg-type]


def batch_of(sid: str, seqs: range, body: bytes = b"\x81\xa4type\xa1x") -> StoreBatch:
    batch = StoreBatch()
    batch.upsert(row(sid, received=seqs.stop - 1))
    for seq in seqs:
        batch.append(sid, StoredEntry(seq, 0, 1.0, body))
    return batch


def test_url_and_name() -> None:
    store = RedisStore("redis://user:s3cret@example.org:6390/2?prefix=blue")
    assert store.prefix == "blue"
    assert store.name == "redis://example.org:6390/2#blue"
    assert "s3cret" not in store.name
    assert RedisStore("redis://h").name == "redis://h/0#genesis"
    for bad in ("http://h:1/0", "redis://", "sqlite:/x"):
        with pytest.raises(ValueError, match="redis://host:port/db"):
            RedisStore(bad)
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://h/0", prefix="{x}")
    sharded = RedisStore("redis://h:7000/0?cluster=yes&prefix=chat")
    assert (sharded.redis_cluster, sharded.keyspace) == (True, "{chat}")
    assert sharded.name == "redis://h:7000/0#chat (Redis Cluster)"
    assert RedisStore("redis://h/0?cluster=no").keyspace == "genesis"
    with pytest.raises(ValueError, match="database 0"):
        RedisStore("redis://h/3?cluster=yes")
    with pytest.raises(ValueError, match="yes or no"):
        RedisStore("redis://h/0?cluster=maybe")


async def test_an_unreachable_server_is_a_store_error_in_bounded_time() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    with trio.fail_after(10), pytest.raises(StoreError, match="Redis"):
        await store.open()
    await store.aclose()


async def test_the_cli_refuses_to_start_without_its_redis() -> None:
    spec = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = await trio.run_process(
        [sys.executable, "-m", "genesis_trio", "serve", "--port", "0", "--store", spec],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 3
    err = result.stderr.decode()
    assert "cannot start: Redis connect failed: Unable to establish a connection" in err
    assert "hunter2" not in err


async def test_an_outage_fails_writes_and_a_restart_keeps_what_was_written() -> None:
    async with redis_server() as server:
        store = RedisStore(server.url, timeout=1.0)
        await store.open()
        await store.write(batch_of("a", range(1, 4)))
        await server.stop()  # SIGKILL: AOF with fsync always keeps every acknowledged write
        with trio.fail_after(10), pytest.raises(StoreError):
            await store.write(batch_of("a", range(4, 6)))
        await server.start()
        await store.write(batch_of("a", range(4, 6)))  # the client reconnects by itself
        await store.aclose()
        state = await (again := RedisStore(server.url)).open()
        await again.aclose()
    [session] = state.sessions
    assert [e.seq for e in session.entries] == [1, 2, 3, 4, 5]
    assert session.row.received == 5


async def test_a_full_server_applies_nothing_of_a_batch() -> None:
    async with redis_server() as server:
        store = RedisStore(server.url, prefix="full")
        await store.open()
        await store.write(batch_of("a", range(1, 3)))
        import coredis

        async with coredis.Redis.from_url(server.url) as admin:
            used = int((await admin.info("memory"))["used_memory"])
            await admin.config_set({"maxmemory": str(used + 256 * 1024)})
            await admin.config_set({"maxmemory-policy": "noeviction"})
            big = StoreBatch()
            big.upsert(row("a", received=40))
            for seq in range(3, 41):  # ~2 MiB: past the limit
                big.append("a", StoredEntry(seq, 0, 1.0, b"x" * 65536))
            big.upsert(row("b"))
            with pytest.raises(StoreError, match=r"OOM|memory") as failed:
                await store.write(big)
            # one short line: never the queued commands and their bodies (logs get it)
            assert len(str(failed.value)) < 300
            assert "xxxxxxxx" not in str(failed.value)
            await admin.config_set({"maxmemory": "0"})
        state = await store.open()
        await store.aclose()
    assert [s.row.sid for s in state.sessions] == ["a"]  # nothing of the failed batch
    assert [e.seq for e in state.sessions[0].entries] == [1, 2]
    assert state.sessions[0].row.received == 2


async def test_an_entry_appended_again_replaces_the_one_with_its_number() -> None:
    async with redis_server() as server:
        store = RedisStore(server.url)
        await store.open()
        await store.write(batch_of("a", range(1, 3), body=b"\x01"))
        await store.write(batch_of("a", range(2, 4), body=b"\x02"))
        state = await store.open()
        await store.aclose()
    assert [(e.seq, e.body) for e in state.sessions[0].entries] == [
        (1, b"\x01"), (2, b"\x02"), (3, b"\x02"),
    ]  # fmt: skip


@pytest.mark.deadline(60)
async def test_a_hub_on_redis_resumes_exactly_once_through_its_restart_and_a_redis_outage() -> None:
    checker = DeliveryChecker()
    events: list[LinkEvent] = []
    store_down = trio.Event()

    def on_event(event: LinkEvent) -> None:
        events.append(event)
        if isinstance(event, Disconnected) and event.code == CloseCode.STORE_UNAVAILABLE:
            store_down.set()

    async def receive(b: TranscendentalWebSocket, n: int) -> None:
        for _ in range(n):
            checker.delivered("a>b", (await b.receive()).data)

    async def hub(task_status: trio.TaskStatus[tuple[str, trio.CancelScope]]) -> None:
        async with trio.open_nursery() as nursery:
            store = RedisStore(server.url, timeout=1.0)
            running = await start_hub(nursery, store=store, **options)
            task_status.started((running.url, nursery.cancel_scope))

    port = free_port()
    quick = functools.partial(backoff, 0.05, 2.0, 0.5)
    options = {"port": port, "store_outage_timeout": 1.0}
    async with redis_server() as server, contextlib.AsyncExitStack() as stack:
        hubs = await stack.enter_async_context(trio.open_nursery())
        url, first = await hubs.start(hub)
        # Refused (4006) all through the outage: without this the circuit breaker opens
        # after 10 attempts and waits 30 s (by design), past this test's bound.
        steady = {"backoff_factory": quick, "breaker_threshold": 1000}
        a = await stack.enter_async_context(
            TranscendentalWebSocket(url, "a", on_link_event=on_event, **steady)  # type: ignore[arg-type]
        )
        b = await stack.enter_async_context(TranscendentalWebSocket(url, "b", **steady))  # type: ignore[arg-type]
        sent = 0

        async def send(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                checker.sent("a>b", sent)
                await a.send("b", "n", sent)
                sent += 1

        await send(100)
        await receive(b, 40)
        await a.flush()  # acknowledged by hub 1 = in Redis
        first.cancel()  # hub 1 stops; hub 2 loads the sessions from Redis
        _, second = await hubs.start(hub)
        await send(50)
        await receive(b, 110)

        await server.stop()  # Redis is killed: nothing can be stored, links close with 4006
        await send(10)
        with trio.fail_after(20):
            await store_down.wait()
        await server.start()  # AOF: what was acknowledged is still there
        with trio.fail_after(20):
            await a.flush()
        await receive(b, 10)
        await a.aclose()
        await b.aclose()
        second.cancel()
    report = checker.report()
    assert report.ok, report
    assert report.delivered == 160
    resumed = [e for e in events if isinstance(e, Connected) and not e.first]
    assert len(resumed) >= 2  # after the hub restart and after the outage
    assert all(e.recovered for e in resumed), resumed


async def test_one_hub_per_prefix_the_same_node_takes_its_lease_back_at_once() -> None:
    async with redis_server() as server:
        first = RedisStore(server.url, owner="node-a", lease=2.0)
        await first.open()
        other = RedisStore(server.url, owner="node-b", lease=2.0)
        started = trio.current_time()
        with pytest.raises(StoreError, match=r"in use by another hub \(node-a\)"):
            await other.open()  # waits out one lease (node-a renews it), then refuses
        assert trio.current_time() - started >= 2.0
        await other.aclose()
        elsewhere = RedisStore(server.url, owner="node-b", prefix="elsewhere")
        await elsewhere.open()  # another prefix: no conflict
        await elsewhere.aclose()
        # node-a "restarted" (a new store, the old one never closed): no wait
        again = RedisStore(server.url, owner="node-a", lease=2.0)
        with trio.fail_after(1):
            await again.open()
        await again.aclose()  # gives the prefix back
        with trio.fail_after(1):
            await other.open()
        # the first store's lease is gone: its writes fail rather than interleave
        with trio.fail_after(5):
            while first._lost is None:  # noqa: ASYNC110 - its renewal notices within lease/3
                await trio.sleep(0.1)
        with pytest.raises(StoreError, match=r"taken over by another hub \(node-b\)"):
            await first.write(batch_of("x", range(1, 2)))
        await first.aclose()
        await other.aclose()
