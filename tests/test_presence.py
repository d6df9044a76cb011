"""Presence (docs/api.md): join and leave events on ``$presence``, member lists.

Events are messages like any other, so they must be delivered exactly once,
in order, across the watcher's cut links and hub restarts; each event
means what the document says (a link drop is not a session end).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from genesis_trio import (
    PRESENCE_TOPIC,
    Message,
    RemoteError,
    StaticTokens,
    TranscendentalWebSocket,
)
from genesis_trio.stores import MemoryStore
from genesis_trio.testing import LinkFaults, MemoryHub, start_memory_hub

from .test_store import Switch, _run_client


def events(messages: list[Message], *, skip: str = "watcher") -> list[tuple[str, str]]:
    """(event, id) pairs, the watcher's own left out."""
    out = []
    for m in messages:
        assert (m.type, m.topic, m.sender) == ("presence", PRESENCE_TOPIC, "$hub")
        data = m.data
        if data.get("id") != skip:
            out.append((data["event"], data.get("id", "")))
    return out


async def collect(ws: TranscendentalWebSocket, count: int) -> list[Message]:
    """The next ``count`` presence messages not about ``ws`` itself."""
    got: list[Message] = []
    while len([m for m in got if m.data.get("id") != ws.component_id]) < count:
        got.append(await ws.receive())
    return [m for m in got if m.data.get("id") != ws.component_id]


async def test_each_event_means_what_the_document_says(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """connected, disconnected, resumed, left (bye, replaced, forgotten), expired."""
    hub: MemoryHub = await start_memory_hub(nursery, session_expiry=30.0)
    async with hub.client("watcher", topics=[PRESENCE_TOPIC]) as watcher:
        faults = LinkFaults()
        a = hub.client("a", faults=faults, topics=["room"])
        await nursery.start(_run_client, a)
        first = (await collect(watcher, 1))[0].data
        assert first["event"] == "connected"
        assert first["topics"] == ["room"]
        assert first["node"] == hub.hub.config.node_id
        assert isinstance(first["at"], float)
        faults.cut()
        got = await collect(watcher, 2)
        assert events(got) == [("disconnected", "a"), ("resumed", "a")]
        await a.aclose()  # bye: the session ends
        assert events(await collect(watcher, 1)) == [("left", "a")]
        async with trio.open_nursery() as inner:
            inner.start_soon(_quietly, hub.client("b"))
            assert events(await collect(watcher, 1)) == [("connected", "b")]
            b2 = hub.client("b", reconnect=False)  # a hello without sid takes over
            inner.start_soon(_quietly, b2)
            got = await collect(watcher, 2)
            assert events(got) == [("left", "b"), ("connected", "b")]
            assert got[0].data["reason"] == "replaced"
            hub.hub.disconnect("b", forget=True)
            got = await collect(watcher, 2)
            assert events(got)[0] == ("disconnected", "b")
            assert (got[1].data["event"], got[1].data["reason"]) == ("left", "forgotten")
        c_faults = LinkFaults()
        c = hub.client("c", faults=c_faults, reconnect=False)
        async with trio.open_nursery() as inner:
            inner.start_soon(_quietly, c)
            await collect(watcher, 1)  # connected
            c_faults.cut()  # c does not come back
            assert events(await collect(watcher, 1)) == [("disconnected", "c")]
            inner.cancel_scope.cancel()
        await trio.sleep(60)  # past session_expiry (mock clock)
        assert events(await collect(watcher, 1)) == [("expired", "c")]


async def _quietly(ws: TranscendentalWebSocket) -> None:
    try:
        async with ws:
            await trio.sleep_forever()
    except Exception:
        return


@pytest.mark.parametrize("seed", [1, 2])
async def test_exactly_once_across_the_watchers_cut_links(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """30 components come and go while the watcher's link is cut again and again."""
    import random

    rng = random.Random(seed)
    hub = await start_memory_hub(nursery)
    faults = LinkFaults()
    watcher = hub.client("watcher", faults=faults, topics=[PRESENCE_TOPIC])
    await nursery.start(_run_client, watcher)
    expected: list[tuple[str, str]] = []
    for n in range(30):
        async with hub.client(f"c{n}"):
            expected.append(("connected", f"c{n}"))
            if rng.random() < 0.5:
                faults.cut()
            await trio.sleep(rng.random())
        expected.append(("left", f"c{n}"))
        if rng.random() < 0.3:
            faults.cut()
    got = await collect(watcher, len(expected))
    assert events(got) == expected
    assert faults.connections > 5
    with trio.move_on_after(5):  # nothing more arrives: no duplicate
        extra = await watcher.receive()
        assert extra.data.get("id") == "watcher", extra
    await watcher.aclose()


async def test_exactly_once_across_a_hub_restart(autojump_clock: trio.testing.MockClock) -> None:
    """Events not yet acknowledged are replayed once; the new hub says it started."""
    store = MemoryStore()
    async with trio.open_nursery() as outer:
        first = trio.open_nursery()
        n1 = await first.__aenter__()
        hub1 = await start_memory_hub(n1, store=store)
        switch = Switch(hub1)
        watcher = TranscendentalWebSocket(
            "ws://x/ws", "watcher", stream_factory=switch, topics=[PRESENCE_TOPIC]
        )
        await outer.start(_run_client, watcher)
        a = TranscendentalWebSocket("ws://x/ws", "a", stream_factory=switch)
        await outer.start(_run_client, a)
        before = await collect(watcher, 1)
        assert events(before) == [("connected", "a")]
        n1.cancel_scope.cancel()
        await first.__aexit__(None, None, None)
        async with trio.open_nursery() as n2:
            hub2 = await start_memory_hub(n2, store=store)
            switch.hub = hub2
            got = await collect(watcher, 2)
            if got[0].data["event"] == "disconnected":  # hub 1 stored it as it stopped
                assert got[0].data["node"] == hub1.hub.config.node_id
                got = got[1:] + await collect(watcher, 1)
            assert [m.data["event"] for m in got] == ["started", "resumed"]
            assert got[0].data["node"] == hub2.hub.config.node_id
            assert got[1].data["id"] == "a"
            await a.aclose()
            assert events(await collect(watcher, 1)) == [("left", "a")]
            await watcher.aclose()
            n2.cancel_scope.cancel()
        outer.cancel_scope.cancel()


async def test_members_of_a_topic(nursery: trio.Nursery) -> None:
    """``presence(topic)`` lists subscribers, connected or not, paging past 1 000."""
    hub = await start_memory_hub(nursery)
    faults = LinkFaults()
    async with (
        hub.client("a", topics=["room"]) as a,
        hub.client("b", topics=["room", "other"], faults=faults, reconnect=False),
    ):
        assert await a.presence("room") == [
            {"id": "a", "connected": True, "node": hub.hub.config.node_id},
            {"id": "b", "connected": True, "node": hub.hub.config.node_id},
        ]
        assert await a.presence("nobody") == []
        with pytest.raises(RemoteError) as bad:
            await a.request("$hub", "presence", {"topic": "no spaces"})
        assert bad.value.code == "bad_field"
        page = hub.hub.presence.members("room", limit=1)
        assert [m["id"] for m in page["members"]] == ["a"]
        assert page["next"] == "a"
        rest = hub.hub.presence.members("room", after="a", limit=1)
        assert ([m["id"] for m in rest["members"]], rest["next"]) == (["b"], None)


async def test_clients_cannot_publish_to_presence(nursery: trio.Nursery) -> None:
    """Only the hub publishes on system topics; clients may subscribe."""
    hub = await start_memory_hub(nursery)
    async with hub.client("a") as a:
        with pytest.raises(ValueError, match="topic"):
            await a.publish(PRESENCE_TOPIC, "presence", {"event": "fake"})
        await a.subscribe(PRESENCE_TOPIC)
        assert hub.hub.topics() == {PRESENCE_TOPIC: 1}
    with pytest.raises(ValueError, match="topic"):
        await hub.hub.publish(PRESENCE_TOPIC, "presence")


async def test_asking_for_members_needs_the_right_to_subscribe(nursery: trio.Nursery) -> None:
    """With authentication, the member list of a topic is as private as the topic."""
    tokens = StaticTokens(
        [
            {"token": "t" * 20, "sub": "alice", "subscribe": ["public.*"]},
            {"token": "u" * 20, "sub": "bob"},
        ]
    )
    hub = await start_memory_hub(nursery, authenticator=tokens)
    async with (
        hub.client("alice", token="t" * 20) as alice,
        hub.client("bob", token="u" * 20, topics=["secret"]),
    ):
        assert await alice.presence("public.lobby") == []
        with pytest.raises(RemoteError) as refused:
            await alice.presence("secret")
        assert refused.value.code == "forbidden"


def test_no_queue_without_subscribers() -> None:
    """Churn costs nothing when nobody listens to ``$presence``."""

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            hub = await start_memory_hub(nursery)
            for n in range(50):
                async with hub.client(f"c{n}"):
                    pass
            stats = hub.hub.get_stats()
            nursery.cancel_scope.cancel()
            return stats

    stats = trio.run(main)
    assert (stats["presence_events"], stats["presence_dropped"]) == (0, 0)


async def test_statistics_on_the_stats_topic(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """``$stats`` carries get_stats() every second while someone listens; admins only."""
    hub = await start_memory_hub(nursery)
    async with hub.client("dash", topics=["$stats"], codec="json") as dash:
        first = await dash.receive()
        assert (first.type, first.topic, first.sender) == ("stats", "$stats", "$hub")
        assert set(first.data) == set(hub.hub.get_stats())
        async with hub.client("short-lived"):
            pass  # a link closed: close_codes has a key now (an int in get_stats())
        while not (second := await dash.receive()).data["close_codes"]:
            assert "error" not in second.data
        assert second.data["close_codes"] == {"1000": 1}
    assert hub.hub.ticker.ticks >= 2
    tokens = StaticTokens(
        [
            {"token": "a" * 20, "sub": "ops", "admin": True},
            {"token": "b" * 20, "sub": "app"},
        ]
    )
    guarded = await start_memory_hub(nursery, authenticator=tokens)
    async with (
        guarded.client("ops", token="a" * 20, topics=["$stats"]) as ops,
        guarded.client("app", token="b" * 20, topics=["$stats"]),
    ):
        assert (await ops.receive()).type == "stats"
        assert guarded.hub.topics() == {"$stats": 1}
