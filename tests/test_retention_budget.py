"""The hub-wide bound on retained bytes (``max_retained_bytes``)."""

from __future__ import annotations

import contextlib
import pathlib

import trio
import trio.testing

from genesis_trio import CloseCode, Disconnected, LinkEvent, Message
from genesis_trio._core.config import HubConfig
from genesis_trio._core.frames import Hello
from genesis_trio._hub.budget import CHECKS_PER_BUDGET
from genesis_trio.stores import SQLiteStore
from genesis_trio.testing import MemoryHub, start_memory_hub

LIMIT = 40_000
BODY = 1_000  # characters of data: each message retains a bit more than this


async def leave(hub: MemoryHub, *ids: str) -> None:
    """Open a session for each id and leave it (kept: ``end_session=False``), in order."""
    for cid in ids:
        client = hub.client(cid)
        await client.connect()
        await client.aclose(end_session=False)


def retained(hub: MemoryHub, cid: str) -> list[int]:
    """The ``n`` of each message the hub retains for ``cid``, oldest first."""
    return [e.payload.body["data"]["n"] for e in hub.hub.sessions.by_id[cid].outbound.entries]


async def test_past_the_budget_the_longest_disconnected_lose_their_oldest(
    nursery: trio.Nursery,
) -> None:
    hub = await start_memory_hub(nursery, HubConfig(max_retained_bytes=LIMIT))
    await leave(hub, "first", "second", "third")
    async with hub.client("live") as live:  # connected, never reads: never shed
        for n in range(10):
            await hub.hub.send("live", "m", {"n": n, "pad": "x" * BODY})
        for cid in ("first", "second", "third"):
            for n in range(15):
                await hub.hub.send(cid, "m", {"n": n, "pad": "x" * BODY})

        stats = hub.hub.get_stats()
        step = LIMIT // CHECKS_PER_BUDGET
        total = sum(s.outbound.size for s in hub.hub.sessions.by_id.values())
        assert total <= LIMIT + step
        assert 0 < stats["retained_bytes"] <= LIMIT
        assert stats["messages_evicted"] > 0
        assert not hub.hub.sessions.by_id["live"].outbound.truncated
        assert retained(hub, "third") == list(range(15))  # disconnected last: kept whole
        first = retained(hub, "first")
        assert first == list(range(15 - len(first), 15))  # the oldest went first
        assert len(first) < 15
        assert hub.hub.sessions.by_id["first"].outbound.truncated
        assert not hub.hub.sessions.by_id["third"].outbound.truncated
        assert [m.data["n"] for m in [await live.receive() for _ in range(10)]] == list(range(10))

    # What is left arrives, in order, and the receiver learns of the gap.
    async with hub.client("first") as again:
        got = [(await again.receive()).data["n"] for _ in range(len(first))]
    assert got == first


async def test_anonymous_sessions_are_shed_before_named_ones(nursery: trio.Nursery) -> None:
    hub = await start_memory_hub(nursery, HubConfig(max_retained_bytes=LIMIT))
    await leave(hub, "named")
    table = hub.hub.sessions
    opened = table.open(Hello(), trio.current_time())  # a hello without an id
    opened.session.detach(trio.current_time())  # disconnected after "named"
    anon_id = opened.session.component_id
    assert opened.session.anonymous
    for cid in ("named", anon_id):
        for n in range(25):
            await hub.hub.send(cid, "m", {"n": n, "pad": "x" * BODY})
    assert hub.hub.sessions.by_id[anon_id].outbound.truncated
    assert not hub.hub.sessions.by_id["named"].outbound.truncated
    assert retained(hub, "named") == list(range(25))


async def test_under_the_budget_nothing_is_shed(nursery: trio.Nursery) -> None:
    hub = await start_memory_hub(nursery, HubConfig(max_retained_bytes=10 * LIMIT))
    await leave(hub, "a", "b")
    for cid in ("a", "b"):
        for n in range(30):
            await hub.hub.send(cid, "m", {"n": n, "pad": "x" * BODY})
    assert hub.hub.router.budget.check() == 0
    assert retained(hub, "a") == retained(hub, "b") == list(range(30))
    assert hub.hub.get_stats()["messages_evicted"] == 0


async def test_what_was_shed_stays_shed_in_the_store(tmp_path: pathlib.Path) -> None:
    """The trim is stored like retention's: after a restart on the same SQLite file the
    shed messages do not come back, and the rest is still there, in order."""
    path = tmp_path / "budget.sqlite3"
    config = HubConfig(max_retained_bytes=LIMIT)
    async with trio.open_nursery() as n1:
        hub1 = await start_memory_hub(n1, config, store=SQLiteStore(path))
        await leave(hub1, "first", "second")
        for cid in ("first", "second"):
            for n in range(30):
                await hub1.hub.send(cid, "m", {"n": n, "pad": "x" * BODY})
        await hub1.hub.journal.wait_committed()
        kept = {cid: retained(hub1, cid) for cid in ("first", "second")}
        assert len(kept["first"]) < 30
        assert kept["second"] == list(range(30))
        n1.cancel_scope.cancel()
    async with trio.open_nursery() as n2:
        hub2 = await start_memory_hub(n2, config, store=SQLiteStore(path))
        assert {cid: retained(hub2, cid) for cid in ("first", "second")} == kept
        n2.cancel_scope.cancel()


async def test_past_the_budget_a_connected_client_that_never_acknowledges_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """With nothing disconnected to shed, the connected session holding the most, once its
    oldest message waited ``slow_consumer_timeout``, is closed (4004) and shed; a client
    that keeps up is not touched."""
    hub = await start_memory_hub(nursery, HubConfig(max_retained_bytes=LIMIT))
    events: list[LinkEvent] = []
    async with hub.client("hog", on_link_event=events.append) as hog, hub.client("fine") as fine:

        @hog.on("m")
        async def stuck(message: Message) -> None:
            await trio.sleep_forever()  # nothing after the first is acknowledged

        for n in range(60):
            await hub.hub.send("hog", "m", {"n": n, "pad": "x" * BODY})
            await hub.hub.send("fine", "m", {"n": n})
            assert (await fine.receive()).data == {"n": n}
            if n == 30:  # over the budget already, but nobody waited long: nobody is closed
                assert hub.hub.get_stats()["slow_consumers_closed"] == 0
                await trio.sleep(hub.hub.config.slow_consumer_timeout)
        stats = hub.hub.get_stats()
        assert stats["slow_consumers_closed"] >= 1
        assert stats["retained_bytes"] <= LIMIT
        assert hub.hub.sessions.by_id["hog"].outbound.truncated
        closes = [e.code for e in events if isinstance(e, Disconnected)]
        assert CloseCode.SLOW_CONSUMER in closes
        assert not hub.hub.sessions.by_id["fine"].outbound.truncated


async def test_a_wide_publish_to_subscribers_that_keep_up_closes_nobody(
    nursery: trio.Nursery,
) -> None:
    """A publish counts once per subscriber: one may pass the budget for a moment, but
    subscribers that acknowledge in time are neither closed nor shed."""
    hub = await start_memory_hub(nursery, HubConfig(max_retained_bytes=LIMIT))
    async with contextlib.AsyncExitStack() as stack:
        subscribers = [
            await stack.enter_async_context(hub.client(f"s{i}", topics=["t"])) for i in range(50)
        ]
        for n in range(3):  # each ~50 KB counted, over the 40 KB budget
            assert await hub.hub.publish("t", "m", {"n": n, "pad": "x" * BODY}) == 50
            for subscriber in subscribers:
                assert (await subscriber.receive()).data["n"] == n
        stats = hub.hub.get_stats()
        assert stats["slow_consumers_closed"] == 0
        assert stats["messages_evicted"] == 0
