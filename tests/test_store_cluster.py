"""``ClusterStore`` against a real ``redis-server``: claims, fencing, idempotent retries, gaps.

And through CLI nodes: anonymous clients (the hub names their sessions and
must claim those names), and a sender that moves to its receiver's node
while the receiver's inbox still holds its earlier messages.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator

import msgpack
import pytest
import trio
import websockets.sync.client

from genesis_trio.stores import SessionRow, StoreBatch
from genesis_trio.stores._cluster import ClusterStore, Inbox, NodeInbox, StoreFenced
from genesis_trio.stores._protocol import Forward
from genesis_trio.testing import DeliveryChecker

from .support.cluster import Switchboard, port_of, start_node
from .support.processes import free_port
from .support.redis import redis_server
from .test_cluster import Links, clean, client

BODY = msgpack.packb({"type": "n", "data": 0, "to": "d", "from": "x"})


@contextlib.asynccontextmanager
async def node(url: str, name: str, **options: object) -> AsyncIterator[ClusterStore]:
    store = ClusterStore(url, node=name, lease=5.0, **options)  # type: ignore[arg-type]
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def session_of(store: ClusterStore, cid: str, *topics: str) -> None:
    claim = await store.claim(cid, None)
    assert claim.kind == "new"
    batch = StoreBatch()
    batch.upsert(SessionRow("sid-" + cid, cid, 1, 0, 0, 0, False, topics, None))
    batch.cids["sid-" + cid] = cid
    await store.write(batch)


def forwards(
    *numbered: tuple[int, int], to: str | None = "d", topic: str | None = None
) -> StoreBatch:
    batch = StoreBatch()
    for number, data in numbered:
        body = msgpack.packb({"type": "n", "data": data, "to": "d", "from": "x"})
        batch.forwards.append(Forward(to, topic, body, number=number))
    return batch


def data_of(bodies: list[bytes]) -> list[int]:
    return [msgpack.unpackb(b)["data"] for b in bodies]


async def node_inbox(store: ClusterStore) -> NodeInbox:
    _, mine = await store.read([], 100, 100)
    assert mine is not None
    return mine


async def own_inbox(store: ClusterStore, cid: str) -> Inbox:
    (inbox,), _ = await store.read([cid], 100, 0)
    return inbox


async def test_a_retried_batch_changes_nothing_twice() -> None:
    async with redis_server() as redis, node(redis.url, "n0") as n0, node(redis.url, "n1") as n1:
        await session_of(n0, "d")
        await n1.write(forwards((1, 0), (2, 1), (3, 2)))
        inbox = await node_inbox(n0)  # for a component held by n0: n0's own inbox
        assert inbox.head == 0
        assert [(k, n) for k, n, _ in inbox.entries] == [("d", "d")] * 3
        assert data_of([b for _, _, b in inbox.entries]) == [0, 1, 2]
        moved = StoreBatch()
        moved.consumed[""] = 2
        moved.cids["sid-d"] = "d"
        await n0.write(moved)
        await n0.write(moved)  # applied, its reply lost, written again: the same state
        again = forwards((4, 3))
        await n1.write(again)
        await n1.write(again)  # the forward is applied once
        await n1.write(forwards((3, 2), (4, 3), (5, 4)))  # a retry holding newer ones too
        inbox = await node_inbox(n0)
        assert (inbox.head, data_of([b for _, _, b in inbox.entries])) == (2, [2, 3, 4])


async def test_a_publish_is_one_entry_per_node_not_per_subscriber() -> None:
    async with redis_server() as redis, node(redis.url, "n0") as n0, node(redis.url, "n1") as n1:
        for cid in ("a", "b", "c"):
            await session_of(n0, cid, "t")
        await session_of(n1, "e", "t")
        await session_of(n1, "f", "u")
        async with node(redis.url, "n2") as n2:
            await n2.write(forwards((1, 7), to=None, topic="t"))
            assert [(k, n) for k, n, _ in (await node_inbox(n0)).entries] == [("t", "t")]
            assert [(k, n) for k, n, _ in (await node_inbox(n1)).entries] == [("t", "t")]
            assert (await node_inbox(n2)).entries == []
            assert (await own_inbox(n0, "a")).bodies == []
        await n0.write(forwards((1, 8), to=None, topic="t"))  # n0 delivers its own
        assert len((await node_inbox(n0)).entries) == 1
        assert len((await node_inbox(n1)).entries) == 2
        await n1.write(forwards((1, 9), to=None, topic="u"))
        assert len((await node_inbox(n0)).entries) == 1  # nobody on n0 has "u"


async def test_letting_go_takes_what_the_node_had_not_delivered() -> None:
    async with redis_server() as redis, node(redis.url, "n0") as n0, node(redis.url, "n1") as n1:
        await session_of(n0, "d", "t")
        await session_of(n0, "e", "t")
        batch = forwards((1, 0))
        batch.forwards += forwards((2, 1), to=None, topic="t").forwards
        batch.forwards += forwards((3, 2), to="e").forwards
        batch.forwards += forwards((4, 3), to=None, topic="v").forwards  # nobody's topic
        batch.forwards += forwards((5, 4)).forwards
        await n1.write(batch)
        await n0.release("d")
        inbox = await own_inbox(n1, "d")
        assert data_of(inbox.bodies) == [0, 1, 4]  # its own, in order: not e's
        claim = await n1.claim("d", None)
        assert (claim.kind, claim.upto) == ("ok", 0)
        await n1.write(forwards((6, 5), to=None, topic="t"))  # d's topic is now n1's
        assert len((await node_inbox(n0)).entries) == 5  # e's were not taken
        assert (await node_inbox(n1)).entries == []  # n1 delivers its own


async def test_a_dead_nodes_undelivered_messages_go_to_the_next_holder() -> None:
    async with redis_server() as redis, node(redis.url, "n1") as n1:
        n0 = ClusterStore(redis.url, node="n0", lease=5.0)
        await n0.open()
        await session_of(n0, "d", "t")
        await n1.write(forwards((1, 0), (2, 1), to=None, topic="t"))
        moved = StoreBatch()
        moved.consumed[""] = 1  # n0 delivered the first, then died
        moved.cids["sid-d"] = "d"
        await n0.write(moved)
        await n0.aclose()  # its node key is gone: its components are free
        await n1.write(forwards((3, 2), to=None, topic="t"))  # still into n0's inbox
        claim = await n1.claim("d", None)
        assert claim.kind == "ok"
        assert data_of((await own_inbox(n1, "d")).bodies) == [1, 2]
        await n1.write(forwards((4, 3), to=None, topic="t"))
        assert (await node_inbox(n1)).entries == []  # its own subscriber now


async def test_fencing_and_claims() -> None:
    async with redis_server() as redis, node(redis.url, "n0") as n0, node(redis.url, "n1") as n1:
        await session_of(n0, "d")
        claim = await n1.claim("d", None)
        assert (claim.kind, claim.holder) == ("busy", n0.token)
        unknown = await n1.claim(None, "no-such-sid")
        assert unknown.kind == "none"
        batch = StoreBatch()
        batch.upsert(SessionRow("sid-e", "e", 1, 0, 0, 0, False, (), None))
        batch.cids["sid-e"] = "e"
        with pytest.raises(StoreFenced, match="no longer holds e"):
            await n1.write(batch)  # never claimed: refused whole
        with pytest.raises(StoreFenced):
            await n1.write(StoreBatch(forwards=[Forward("d", None, BODY, number=1)]))


async def test_full_inboxes_refuse_messages_and_leave_gaps_for_publishes() -> None:
    small = {"inbox_capacity": 2, "node_inbox_capacity": 2}
    async with redis_server() as redis, node(redis.url, "n0", **small) as n0:
        await session_of(n0, "d", "t")
        async with node(redis.url, "n1", **small) as n1:
            pub = forwards((1, 0), (2, 1), (3, 2), to=None, topic="t")
            pub.forwards += forwards((4, 3)).forwards
            refused = await n1.write(pub)
            assert refused is not None
            assert [(f.number, why) for f, why in refused] == [(4, "full")]
            mine = await node_inbox(n0)
            assert len(mine.entries) == 2
            assert set(mine.gaps) == {"t"}  # n0 marks its subscribers of "t" truncated
            await n0.write(StoreBatch(gaps={"#t": mine.gaps["t"]}))
            assert (await node_inbox(n0)).gaps == {}
            await n0.write(StoreBatch(forwards=forwards((5, 4)).forwards))  # n0 spills to d
            spill = Forward("d", "t", BODY, spill=True, number=6)
            await n0.write(StoreBatch(forwards=[spill, spill._replace(number=7)]))
            inbox = await own_inbox(n0, "d")
            assert len(inbox.bodies) == 2
            assert inbox.gap is not None  # the owner will mark the session truncated
            await n0.write(StoreBatch(gaps={"d": inbox.gap}))
            assert (await own_inbox(n0, "d")).gap is None


def _hello(url: str, hello: dict[str, object]) -> dict[str, object]:
    with websockets.sync.client.connect(url, subprotocols=["genesis.v1.json"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"t": "hello", "v": 1, **hello}))
        welcome: dict[str, object] = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"t": "bye"}))
        return welcome


def _hello_and_hold(
    url: str, hello: dict[str, object], welcomed: threading.Event, release: threading.Event
) -> dict[str, object]:
    """Hello, then stay connected until ``release``; bye (raises if the link was dropped)."""
    with websockets.sync.client.connect(url, subprotocols=["genesis.v1.json"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"t": "hello", "v": 1, **hello}))
        welcome: dict[str, object] = json.loads(ws.recv(timeout=10))
        welcomed.set()
        release.wait(10)
        ws.send(json.dumps({"t": "bye"}))
        return welcome


@pytest.mark.deadline(60)
async def test_another_components_session_id_cannot_fence_a_node() -> None:
    """A hello naming a session id this node holds for another component (no id, or a
    new id) opens a new session that is claimed like any other: it used to be left
    unclaimed, and the node's next commit fenced it (every link closed 4006, the
    process gone)."""
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=2.0))
        links = Links()
        a = await stack.enter_async_context(client([n0.url], "a", links))
        await a.send("a", "ping", 1)
        assert (await a.receive()).data == 1
        sid = links.events[0][1].sid
        release = threading.Event()
        welcomes: list[dict[str, object]] = []

        async def hold(hello: dict[str, object], welcomed: threading.Event) -> None:
            welcome = await trio.to_thread.run_sync(
                _hello_and_hold, n0.url, hello, welcomed, release
            )
            welcomes.append(welcome)

        try:
            async with trio.open_nursery() as nursery:
                for hello in ({"sid": sid}, {"id": "fresh", "sid": sid}):
                    welcomed = threading.Event()
                    nursery.start_soon(hold, hello, welcomed)
                    assert await trio.to_thread.run_sync(welcomed.wait, 10)
                await a.send("a", "ping", 2)  # a commit with both new sessions in it
                assert (await a.receive()).data == 2
                release.set()
        finally:
            release.set()
        assert n0.alive
        assert [w["t"] for w in welcomes] == ["welcome", "welcome"]
        ids = sorted(str(w["id"]) for w in welcomes)
        assert ids[0].startswith("anon-")
        assert ids[1] == "fresh"
        assert a.statistics().reconnects == 0


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


async def test_a_copy_from_a_dead_node_stops_at_capacity_with_a_gap() -> None:
    async with redis_server() as redis, node(redis.url, "n1", inbox_capacity=2) as n1:
        n0 = ClusterStore(redis.url, node="n0", lease=5.0)
        await n0.open()
        await session_of(n0, "d", "t")
        await session_of(n0, "e", "u")
        await n1.write(forwards((1, 0), (2, 1), (3, 2), to=None, topic="t"))
        await n0.aclose()
        assert (await n1.claim("e", None)).kind == "ok"  # nothing there for it
        assert (await own_inbox(n1, "e")).bodies == []
        assert (await n1.claim("d", None)).kind == "ok"
        inbox = await own_inbox(n1, "d")
        assert data_of(inbox.bodies) == [0, 1]
        assert inbox.gap is not None  # the third could not be kept: its resume says so
