"""A cluster node's inboxes, in process (a real ``redis-server``): the races a reviewer found.

Each node here is a journal, a session table, a router and a
:class:`ClusterNode` on a :class:`ClusterStore`; a bare store plays the
other nodes. Every test failed on the first version of node inboxes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import trio

from genesis_trio._core.config import HubConfig
from genesis_trio._core.frames import Hello
from genesis_trio._hub.cluster import ClusterNode
from genesis_trio._hub.journal import Journal
from genesis_trio._hub.router import Router
from genesis_trio._hub.sessions import SessionTable
from genesis_trio._hub.stats import HubCounters
from genesis_trio.stores import SessionRow, StoreBatch
from genesis_trio.stores._cluster import ClusterStore
from genesis_trio.stores._protocol import Forward, StoreError

from .support.redis import redis_server


def body(data: int, to: str | None = "d", topic: str | None = None) -> bytes:
    b: dict[str, Any] = {"type": "n", "data": data, "from": "x"}
    b.update({"topic": topic} if topic else {"to": to})
    return bytes(msgpack.packb(b))


def publish(number: int, data: int, topic: str) -> StoreBatch:
    return StoreBatch(forwards=[Forward(None, topic, body(data, None, topic), number=number)])


def send(number: int, data: int, to: str) -> StoreBatch:
    return StoreBatch(forwards=[Forward(to, None, body(data, to), number=number)])


async def store_of(url: str, name: str, **options: Any) -> ClusterStore:
    store = ClusterStore(url, node=name, lease=5.0, **options)
    await store.open()
    return store


async def session_of(store: ClusterStore, cid: str, *topics: str) -> None:
    assert (await store.claim(cid, None)).kind == "new"
    batch = StoreBatch()
    batch.upsert(SessionRow("sid-" + cid, cid, 1, 0, 0, 0, False, topics, None))
    batch.cids["sid-" + cid] = cid
    await store.write(batch)


class Node:
    """One node in this process: what the hub wires, without links."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        config = HubConfig(node_id=store.node)
        self.journal = Journal(store, on_released=lambda s: None, on_outage=lambda: None)
        self.table = SessionTable(config, self.journal)
        self.cluster = ClusterNode(store, self.journal, self.table)
        self.router = Router(config, HubCounters(), self.table, self.journal, {})
        self.router.cluster = self.cluster
        self.cluster.drain.router = self.router
        self.journal.on_refused = self.cluster.refused

    def log_of(self, cid: str) -> list[int]:
        return [p.body["data"] for p in self.table.by_id[cid].outbound.payloads()]

    async def arrive(self, cid: str) -> None:
        refused, _ = await self.cluster.arrive(Hello(id=cid))
        assert refused is None, refused


@contextlib.asynccontextmanager
async def node(url: str, name: str) -> AsyncIterator[Node]:
    n = Node(await store_of(url, name))
    async with trio.open_nursery() as nursery:
        await nursery.start(n.journal.run)
        try:
            yield n
        finally:
            nursery.cancel_scope.cancel()
    await n.store.aclose()


async def test_a_claim_from_a_dead_node_delivers_once_with_a_co_subscriber_here() -> None:
    async with redis_server() as redis:
        n0 = await store_of(redis.url, "n0")
        await session_of(n0, "d", "t")
        async with node(redis.url, "n1") as n1:
            await session_of(n1.store, "e", "t")  # n1 has a subscriber of t too
            other = await store_of(redis.url, "n2")
            await other.write(publish(1, 7, "t"))  # one entry for n0, one for n1
            await n0.aclose()  # n0 dies: d is free
            await n1.arrive("d")
            await n1.cluster.drain.round()
            assert n1.log_of("d") == [7]
            await other.aclose()


async def test_a_component_let_go_and_taken_back_gets_its_message_once() -> None:
    async with redis_server() as redis, node(redis.url, "k") as k:
        await session_of(k.store, "d")
        await k.arrive("d")
        other = await store_of(redis.url, "z")
        await other.write(send(1, 5, "d"))  # into k's inbox
        await k.cluster._let_go("d")  # before its drain passed it: copied to d's own inbox
        await k.arrive("d")
        await k.cluster.drain.round()
        assert k.log_of("d") == [5]
        await other.aclose()


async def test_an_arriving_sender_is_not_overtaken_while_another_arrival_holds_the_inbox() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "c")
        await m.arrive("c")
        other = await store_of(redis.url, "z")
        await session_of(other, "s")
        await other.write(send(1, 1, "c"))  # s's first message to c: in m's inbox
        await other.release("s")  # s moves to m
        drain = m.cluster.drain
        drain.paused += 1  # another arrival: claimed, not loaded yet
        async with drain.lock:  # a pass while paused reads nothing of this node's inbox
            assert not await drain.some((), node=True)  # and does not say it was emptied
        assert drain.node_upto == 0
        arrived = trio.Event()

        async def arrive() -> None:
            await m.arrive("s")
            arrived.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(arrive)
            await trio.testing.wait_all_tasks_blocked()
            if not arrived.is_set():  # s waits for its earlier message first (as it must)
                drain.paused -= 1  # the other arrival loaded
                await arrived.wait()
        await m.router.deliver_anywhere({"type": "n", "data": 2, "to": "c", "from": "s"})
        drain.paused = 0
        await m.journal.wait_committed()
        await drain.round()
        assert m.log_of("c") == [1, 2]
        await other.aclose()


async def test_refusals_are_reported_again_when_a_batch_is_retried() -> None:
    async with redis_server() as redis:
        n0 = await store_of(redis.url, "n0", inbox_capacity=1)
        await session_of(n0, "d")
        await n0.release("d")  # held by nobody: its own inbox, room for one
        n1 = await store_of(redis.url, "n1", inbox_capacity=1)
        batch = send(1, 0, "d")
        batch.forwards += [*send(2, 1, "d").forwards, *send(3, 2, "nobody").forwards]
        first = await n1.write(batch)
        again = await n1.write(batch)  # its first reply was lost: the journal reads this one
        expected = [(2, "full"), (3, "unknown")]
        assert [(f.number, why) for f, why in first or ()] == expected
        assert [(f.number, why) for f, why in again or ()] == expected
        batch.forwards += send(4, 3, "nobody").forwards  # a retry with a newer one
        third = await n1.write(batch)
        assert [(f.number, why) for f, why in third or ()] == [*expected, (4, "unknown")]
        await n0.aclose()
        await n1.aclose()


async def test_a_spill_for_a_deleted_session_leaves_nothing_behind() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "d")
        batch = StoreBatch(deletes={"sid-d"}, cids={"sid-d": "d"})
        batch.forwards.append(Forward("d", "t", body(9, None, "t"), spill=True, number=1))
        await m.store.write(batch)  # the delete and a spill in one commit
        (inbox,), _ = await m.store.read(["d"], 10, 0)
        assert inbox.bodies == []


async def test_letting_go_keeps_the_sessions_subscriptions() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "d", "t")
        await m.arrive("d")
        session = m.table.by_id["d"]
        m.journal.touched(session)  # a header change not yet committed when it leaves
        m.table.unload(session)
        await m.journal.wait_committed()
        assert "d" not in {s.component_id for s in m.table.subscribers.get("t", ())}
        other = await store_of(redis.url, "k")
        await m.store.release("d")
        claim = await other.claim("d", None)
        assert claim.state is not None
        assert claim.state.sessions[0].row.topics == ("t",)
        await other.aclose()


async def test_a_failed_release_keeps_the_components_messages() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "d")
        await m.arrive("d")
        real = m.store.release

        async def failing(cid: str) -> None:
            raise StoreError("Redis release took longer than 5.0 s")

        m.store.release = failing  # type: ignore[method-assign]
        with contextlib.suppress(StoreError):
            await m.cluster._let_go("d")  # unloaded; its release failed
        m.store.release = real  # type: ignore[method-assign]
        other = await store_of(redis.url, "z")
        await other.write(send(1, 3, "d"))  # still m's in Redis: into m's inbox
        await m.cluster.drain.round()  # held back: d's entry is not passed over
        assert m.cluster.drain.node_upto == 0
        await m.cluster._release_held()
        (inbox,), _ = await other.read(["d"], 10, 0)
        assert [msgpack.unpackb(b)["data"] for b in inbox.bodies] == [3]
        await other.aclose()


async def test_a_new_session_of_a_component_reads_its_inbox_from_the_start() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "d")
        await m.arrive("d")
        drain = m.cluster.drain
        old = m.table.by_id["d"]
        drain.spill(old, None, body(1))
        drain.spill(old, None, body(2))
        await m.journal.wait_committed()
        await drain.round()
        assert m.log_of("d") == [1, 2]
        m.table.remove(old)  # bye
        await m.journal.wait_committed()
        await m.arrive("d")
        new = m.table._new("d")  # what table.open does for a new session
        m.journal.rewritten(new)
        await m.journal.wait_committed()
        drain.spill(new, None, body(3))
        drain.spill(new, None, body(4))
        await m.journal.wait_committed()
        await drain.round()
        assert m.log_of("d") == [3, 4]


class FakeLink:
    """A session's link, as far as the node needs one: it records how it was closed."""

    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    def close_soon(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def committed(self, now: float) -> None:
        pass


async def test_a_connected_session_that_lost_messages_is_told_at_once() -> None:
    async with redis_server() as redis:
        n = Node(await store_of(redis.url, "m", inbox_capacity=2))
        async with trio.open_nursery() as nursery:
            await nursery.start(n.journal.run)
            await session_of(n.store, "d")
            await n.arrive("d")
            session = n.table.by_id["d"]
            link = FakeLink()
            session.attach(link, trio.current_time())
            for data in (1, 2, 3):  # a reader far behind: its own inbox holds two
                n.cluster.drain.spill(session, None, body(data))
            await n.journal.wait_committed()
            await n.cluster.drain.round()
            assert session.outbound.truncated  # its resume says recovered: false
            assert [code for code, _ in link.closed] == [4004]  # and it is told now
            nursery.cancel_scope.cancel()
        await n.store.aclose()


async def test_publishes_wait_only_for_arrivals_subscribed_to_their_topic() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "d", "t")
        await session_of(m.store, "e", "u")
        await m.arrive("e")
        cluster = m.cluster
        claimed = trio.Event()
        moving = cluster._moving

        def spy(topics: Any, sign: int) -> None:
            moving(topics, sign)
            if sign > 0 and "t" in topics:
                claimed.set()

        cluster._moving = spy  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery, cluster.drain.lock:  # d: claimed, not loaded
            nursery.start_soon(m.arrive, "d")
            await claimed.wait()
            with trio.fail_after(5):  # another topic goes through meanwhile
                publish_u = {"type": "n", "topic": "u", "from": "x", "data": 1}
                reached = await m.router.deliver_anywhere(publish_u)
            assert reached == 1
            assert cluster.waits(None, "t")
            nursery.start_soon(  # d's topic waits for d
                m.router.deliver_anywhere, {"type": "n", "topic": "t", "from": "x", "data": 2}
            )
        await m.journal.wait_committed()
        await cluster.drain.round()  # (behind what its own inbox held, empty here)
        assert m.log_of("d") == [2]  # it reached d, loaded here in the meantime
        assert m.log_of("e") == [1]


async def test_a_publish_here_right_after_a_claim_waits_behind_the_copied_ones() -> None:
    async with redis_server() as redis, node(redis.url, "n1") as n1:
        n0 = await store_of(redis.url, "n0")
        await session_of(n0, "d", "t")
        await n1.store.write(publish(1, 1, "t"))  # for d: in n0's inbox, undelivered
        await n0.aclose()  # n0 dies
        cluster = n1.cluster
        loaded = trio.Event()
        some = cluster.drain.some

        async def spy(sessions: Any, *, node: bool) -> bool:
            if not node and not loaded.is_set():  # d is loaded; its own inbox not read yet
                loaded.set()
                await n1.router.deliver_anywhere({"type": "n", "topic": "t", "from": "x",
                                                  "data": 2})  # fmt: skip
            return await some(sessions, node=node)

        cluster.drain.some = spy  # type: ignore[method-assign]
        await n1.arrive("d")
        await cluster.drain.round()
        assert n1.log_of("d") == [1, 2]


async def test_a_publish_recorded_before_a_claim_reaches_the_claimed_component() -> None:
    async with redis_server() as redis, node(redis.url, "n1") as n1:
        n0 = await store_of(redis.url, "n0")
        await session_of(n0, "d", "t")
        await n0.aclose()  # n0 dies: d is free
        store = n1.store
        write, claim = store.write, store.claim
        writes = 0
        first, go, claimed = trio.Event(), trio.Event(), trio.Event()

        async def slow_write(batch: StoreBatch) -> Any:
            nonlocal writes
            writes += 1
            if writes == 1:  # publish 1: in flight when d arrives
                first.set()
                await go.wait()
            elif not claimed.is_set():  # a publish made meanwhile, written after the claim
                with trio.move_on_after(5):
                    await claimed.wait()
            return await write(batch)

        async def spy_claim(cid: str | None, sid: str | None) -> Any:
            try:
                return await claim(cid, sid)
            finally:
                claimed.set()

        store.write = slow_write  # type: ignore[method-assign]
        store.claim = spy_claim  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await n1.router.deliver_anywhere({"type": "n", "topic": "t", "from": "x", "data": 1})
            await first.wait()
            nursery.start_soon(n1.arrive, "d")  # it waits for publish 1's commit
            await trio.testing.wait_all_tasks_blocked()
            publish_2 = {"type": "n", "topic": "t", "from": "x", "data": 2}
            nursery.start_soon(n1.router.deliver_anywhere, publish_2)  # during that wait
            await trio.testing.wait_all_tasks_blocked()
            go.set()
        store.write, store.claim = write, claim  # type: ignore[method-assign]
        await n1.journal.wait_committed()
        await n1.cluster.drain.round()
        assert n1.log_of("d") == [1, 2]


async def test_a_held_release_does_not_let_go_of_a_component_arriving_meanwhile() -> None:
    async with redis_server() as redis, node(redis.url, "m") as m:
        await session_of(m.store, "d")
        cluster = m.cluster
        cluster._hold("d")  # a claim of d that was cancelled before its answer
        async with trio.open_nursery() as nursery, cluster.drain.lock:
            nursery.start_soon(cluster._release_held)  # it waits for the lock
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(m.arrive, "d")  # d's client comes back here
            await trio.testing.wait_all_tasks_blocked()
        session = m.table.by_id["d"]
        m.journal.touched(session)
        await m.journal.wait_committed()
        assert m.journal.fenced is None  # this node still holds d: its writes go through
        assert not cluster._unreleased
