"""``ClusterStore`` against a real ``redis-server``: claims, fencing, idempotent retries, gaps.

And through CLI nodes: anonymous clients (the hub names their sessions and
must claim those names), and a sender that moves to its receiver's node
while the receiver's inbox still holds its earlier messages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import msgpack
import pytest
import trio
import websockets.sync.client

from genesis_trio.stores import SessionRow, StoreBatch
from genesis_trio.stores._cluster import ClusterStore, StoreFenced
from genesis_trio.stores._protocol import Forward
from genesis_trio.testing import DeliveryChecker

from .support.cluster import Switchboard, port_of, start_node
from .support.processes import free_port
from .support.redis import redis_server
from .test_cluster import Links, clean, client

BODY = msgpack.packb({"type": "n", "data": 0, "to": "d", "from": "x"})


def header(cid: str, sid: str) -> SessionRow:
    return SessionRow(sid, cid, 1, 0, 0, 0, False, (), None)


@contextlib.asynccontextmanager
async def node(url: str, name: str, **options: object) -> AsyncIterator[ClusterStore]:
    store = ClusterStore(url, node=name, lease=5.0, **options)  # type: ignore[arg-type]
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def session_of(store: ClusterStore, cid: str) -> None:
    claim = await store.claim(cid, None)
    assert claim.kind == "new"
    batch = StoreBatch()
    batch.upsert(header(cid, "sid-" + cid))
    batch.cids["sid-" + cid] = cid
    await store.write(batch)


def forwards(*numbered: tuple[int, int]) -> StoreBatch:
    batch = StoreBatch()
    for number, data in numbered:
        body = msgpack.packb({"type": "n", "data": data, "to": "d", "from": "x"})
        batch.forwards.append(Forward("d", None, body, number=number))
    return batch


def data_of(bodies: list[bytes]) -> list[int]:
    return [msgpack.unpackb(b)["data"] for b in bodies]


async def test_a_retried_batch_changes_nothing_twice() -> None:
    async with redis_server() as redis, node(redis.url, "n0") as n0, node(redis.url, "n1") as n1:
        await session_of(n0, "d")
        await n1.write(forwards((1, 0), (2, 1), (3, 2)))
        (inbox,) = await n0.inboxes(["d"], 10)
        assert (inbox.head, data_of(inbox.bodies)) == (0, [0, 1, 2])
        moved = StoreBatch()
        moved.consumed["d"] = 2
        moved.cids["sid-d"] = "d"
        await n0.write(moved)
        await n0.write(moved)  # applied, its reply lost, written again: the same state
        again = forwards((4, 3))
        await n1.write(again)
        await n1.write(again)  # the forward is applied once
        await n1.write(forwards((3, 2), (4, 3), (5, 4)))  # a retry holding newer ones too
        (inbox,) = await n0.inboxes(["d"], 10)
        assert (inbox.head, data_of(inbox.bodies)) == (2, [2, 3, 4])


async def test_fencing_and_claims() -> None:
    async with redis_server() as redis, node(redis.url, "n0") as n0, node(redis.url, "n1") as n1:
        await session_of(n0, "d")
        claim = await n1.claim("d", None)
        assert (claim.kind, claim.holder) == ("busy", n0.token)
        unknown = await n1.claim(None, "no-such-sid")
        assert unknown.kind == "none"
        batch = StoreBatch()
        batch.upsert(header("e", "sid-e"))
        batch.cids["sid-e"] = "e"
        with pytest.raises(StoreFenced, match="no longer holds e"):
            await n1.write(batch)  # never claimed: refused whole
        with pytest.raises(StoreFenced):
            await n1.write(StoreBatch(forwards=[Forward("d", None, BODY, number=1)]))


async def test_a_full_inbox_records_a_gap_for_publishes() -> None:
    async with redis_server() as redis, node(redis.url, "n0", inbox_capacity=2) as n0:
        await session_of(n0, "d")
        batch = StoreBatch()
        batch.upsert(SessionRow("sid-d", "d", 1, 0, 0, 0, False, ("t",), None))
        batch.cids["sid-d"] = "d"
        await n0.write(batch)
        async with node(redis.url, "n1", inbox_capacity=2) as n1:
            pub = StoreBatch()
            for i in range(3):
                pub.forwards.append(Forward(None, "t", BODY, number=i + 1))
            pub.forwards.append(Forward("d", None, BODY, number=4))
            refused = await n1.write(pub)
            assert refused is not None
            assert [(f.number, why) for f, why in refused] == [(4, "full")]
        (inbox,) = await n0.inboxes(["d"], 10)
        assert len(inbox.bodies) == 2
        assert inbox.gap is not None  # the owner will mark the session truncated
        seen = StoreBatch(gaps={"d": inbox.gap})
        await n0.write(seen)
        (inbox,) = await n0.inboxes(["d"], 10)
        assert inbox.gap is None


def _hello(url: str, hello: dict[str, object]) -> dict[str, object]:
    with websockets.sync.client.connect(url, subprotocols=["genesis.v1.json"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"t": "hello", "v": 1, **hello}))
        welcome: dict[str, object] = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"t": "bye"}))
        return welcome


@pytest.mark.slow
@pytest.mark.deadline(60)
async def test_anonymous_clients_on_a_cluster() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=2.0))
        for hello in (
            {},  # a new anonymous session
            {"sid": "expired-or-unknown"},  # an unknown session id, no name
            {"id": "anon-forged"},  # the reserved prefix, no session
            {"id": "anon-forged", "sid": "unknown"},
        ):
            welcome = await trio.to_thread.run_sync(_hello, n0.url, hello)
            assert welcome["t"] == "welcome", (hello, welcome)
            assert str(welcome["id"]).startswith("anon-")
            assert welcome["id"] != "anon-forged"
        links = Links()
        a = await stack.enter_async_context(client([n0.url], "a", links))
        await a.send("a", "ping", 1)  # the node still commits: it was never fenced
        assert (await a.receive()).data == 1
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", lease=2.0))
        sid = links.events[0][1].sid  # a named session's sid alone resumes nothing (anonymous only)
        for url in (n0.url, n1.url):
            welcome = await trio.to_thread.run_sync(_hello, url, {"sid": sid})
            assert welcome["id"] != "a"
            assert welcome["recovered"] is False
        assert a.statistics().reconnects == 0  # its link was not taken over
        assert n0.alive
        assert n1.alive
        clean(n0)


@pytest.mark.slow
@pytest.mark.deadline(60)
async def test_a_second_process_with_a_running_nodes_id_does_not_disturb_it() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=1.0))
        links = Links()
        a = await stack.enter_async_context(client([n0.url], "a", links))
        with pytest.raises(EOFError):  # it exits (status 3) without ever saying it is ready
            async with start_node(redis.url, "n0", lease=1.0):
                pass
        await a.send("a", "still", 1)
        assert (await a.receive()).data == 1
        assert n0.alive
        assert a.statistics().reconnects == 0
        clean(n0)


@pytest.mark.slow
@pytest.mark.deadline(60)
async def test_connect_tries_every_address_once() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0"))
        dead = f"ws://127.0.0.1:{free_port()}/ws"
        links = Links()
        a = await stack.enter_async_context(client([dead, dead, n0.url], "a", links))
        assert links.count("a") == 1
        await a.send("a", "x", 1)
        assert (await a.receive()).data == 1


@pytest.mark.slow
@pytest.mark.deadline(90)
async def test_a_sender_moving_to_its_receivers_node_is_not_overtaken() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        small = ("--retention-messages", "20")
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", *small, lease=30.0))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", *small, lease=30.0))
        board = Switchboard()
        links = Links()
        c = await stack.enter_async_context(client([n0.url], "c", links, inbox_size=5))
        x = await stack.enter_async_context(
            client([n1.url, n0.url], "x", links, board, heartbeat_interval=0.3,
                   heartbeat_floor=0.3)
        )  # fmt: skip
        checker = DeliveryChecker()
        total = 600

        async def send(numbers: range) -> None:
            for n in numbers:
                await x.send("c", "n", n)
                checker.sent(("x", "c"), n)

        with trio.fail_after(60):
            await send(range(total // 2))  # through n1 into c's inbox; c is not reading
            await x.flush()
            board.silence(port_of(n1.url))  # x moves to c's node, c's inbox still full
            await links.wait("x", 2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, range(total // 2, total))
                for _ in range(total):
                    message = await c.receive()
                    checker.delivered((message.sender, "c"), message.data)
        report = checker.report()
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4
        assert [e.recovered for name, e in links.events if name == "x"] == [False, True]
        clean(n0)
        clean(n1)


@pytest.mark.slow
@pytest.mark.deadline(90)
async def test_a_receiver_arriving_at_its_senders_node_gets_its_inbox_first() -> None:
    """A session loaded but still draining its inbox takes nothing directly (stranger's run)."""
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=2.0))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", lease=2.0))
        board = Switchboard()
        board.silence(port_of(n0.url))  # b reaches n1 only, for now
        links = Links()
        a = await stack.enter_async_context(client([n0.url], "a", links))
        b = await stack.enter_async_context(client([n1.url, n0.url], "b", links, board))
        checker = DeliveryChecker()
        await b.send("b", "stored", 0)  # a round trip: b's new session is in Redis now
        assert (await b.receive()).type == "stored"
        n1.process.kill()  # b's node dies: what a sends now waits in b's inbox
        await n1.process.wait()

        async def send(numbers: range, pace: float = 0.0) -> None:
            for n in numbers:
                await a.send("b", "n", n)
                checker.sent(("a", "b"), n)
                if pace:
                    await trio.sleep(pace)

        import coredis

        with trio.fail_after(60):
            await send(range(1500))
            await a.flush()
            async with coredis.Redis.from_url(redis.url) as r:  # n1's lease lapsed: b is free
                while await r.exists([b"genesis:node:n1"]):  # noqa: ASYNC110 - Redis's state
                    await trio.sleep(0.05)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, range(1500, 2000), 0.01)  # while b arrives at n0
                board.restore(port_of(n0.url))
                for _ in range(2000):
                    message = await b.receive()
                    checker.delivered((message.sender, "b"), message.data)
        report = checker.report()
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4
        assert [e.recovered for name, e in links.events if name == "b"] == [False, True]
        clean(n0)
