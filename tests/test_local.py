"""In-process components (``hub.local``): the client's API, any session's guarantees."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from genesis_trio import (
    CloseCode,
    ClosedError,
    Connected,
    ConnectionClosed,
    LocalComponent,
    Message,
    RemoteError,
    UnknownComponent,
)
from genesis_trio._hub.local import SEND_TURNS
from genesis_trio.stores import MemoryStore
from genesis_trio.testing import DeliveryChecker, LinkFaults, start_memory_hub

from .test_store import Switch, _run_client


async def test_the_clients_api_both_ways(nursery: trio.Nursery) -> None:
    """Handlers, requests each way, receive, publish, subscribe, statistics."""
    hub = await start_memory_hub(nursery)
    async with hub.hub.local("svc", topics=["orders"]) as svc, hub.client("alice") as alice:
        assert isinstance(svc, LocalComponent)

        @svc.on("double")
        async def double(message: Message) -> int:
            assert message.sender == "alice"
            return int(message.data) * 2

        @svc.on("fail")
        async def fail(message: Message) -> None:
            raise RuntimeError("no")

        @alice.on("whoami")
        async def whoami(message: Message) -> str:
            return f"alice, asked by {message.sender}"

        assert await alice.request("svc", "double", 21) == 42
        with pytest.raises(RemoteError) as failed:
            await alice.request("svc", "fail")
        assert failed.value.code == "handler_error"
        assert await svc.request("alice", "whoami") == "alice, asked by svc"
        await alice.publish("orders", "new", {"n": 1})
        got = await svc.receive()
        assert (got.type, got.topic, got.sender, got.data) == ("new", "orders", "alice", {"n": 1})
        seq = await svc.send("alice", "hi", [1, 2])
        assert seq >= 1
        hi = await alice.receive()
        assert (hi.sender, hi.data, hi.seq) == ("svc", [1, 2], seq)
        await alice.subscribe("prices")
        assert await svc.publish("prices", "tick", 3) == 1
        assert (await alice.receive()).data == 3
        await svc.subscribe("more")
        assert hub.hub.component("svc").topics == ("more", "orders")
        assert hub.hub.component("svc").local is True
        with pytest.raises(UnknownComponent):
            await svc.send("nobody", "x")
        with pytest.raises(ValueError, match="topic"):
            await svc.publish("$presence", "x")
        assert await svc.request("$hub", "presence", {"topic": "orders"}) == {
            "topic": "orders",
            "members": [{"id": "svc", "connected": True, "node": hub.hub.config.node_id}],
            "next": None,
        }
        stats = svc.get_stats()
        assert stats["messages_sent"] >= 4
        assert stats["requests_sent"] == 2
        assert stats["errors_contained"] == 1
    with pytest.raises(ClosedError):
        await svc.send("alice", "late")


async def test_exactly_once_in_order_with_a_remote_peer_on_a_cut_link(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """500 messages each way while the remote peer's link is cut every 50."""
    hub = await start_memory_hub(nursery)
    checker = DeliveryChecker()
    faults = LinkFaults()
    links: list[trio.Event] = [trio.Event()]

    def on_link(event: object) -> None:
        if isinstance(event, Connected):
            links[-1].set()

    async with (
        hub.hub.local("svc") as svc,
        hub.client("peer", faults=faults, on_link_event=on_link) as peer,
    ):

        async def drain_local() -> None:
            for _ in range(500):
                checker.delivered("peer>svc", (await svc.receive()).data)

        async def drain_remote() -> None:
            for _ in range(500):
                checker.delivered("svc>peer", (await peer.receive()).data)

        async with trio.open_nursery() as inner:
            inner.start_soon(drain_local)
            inner.start_soon(drain_remote)
            for n in range(500):
                checker.sent("peer>svc", n)
                await peer.send("svc", "n", n)
                checker.sent("svc>peer", n)
                await svc.send("peer", "n", n)
                if n % 50 == 49:
                    links.append(trio.Event())
                    assert faults.cut()
                    await links[-1].wait()  # the peer is back: cut the next link
    report = checker.report()
    assert report.ok, report
    assert report.delivered == 1000
    assert faults.connections >= 10


async def test_messages_wait_for_a_stopped_component_and_survive_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sent while it is stopped, before and after a hub restart: each arrives once, in order."""
    store = MemoryStore()
    async with trio.open_nursery() as outer:
        first = trio.open_nursery()
        n1 = await first.__aenter__()
        hub1 = await start_memory_hub(n1, store=store)
        switch = Switch(hub1)
        from genesis_trio import TranscendentalWebSocket

        sender = TranscendentalWebSocket("ws://x/ws", "sender", stream_factory=switch)
        await outer.start(_run_client, sender)
        async with hub1.hub.local("svc") as svc:
            await sender.send("svc", "n", 0)
            assert (await svc.receive()).data == 0
        for n in range(1, 4):  # svc is stopped: they wait in its session
            await sender.send("svc", "n", n)
        await sender.flush()
        n1.cancel_scope.cancel()
        await first.__aexit__(None, None, None)
        async with trio.open_nursery() as n2:
            hub2 = await start_memory_hub(n2, store=store)
            switch.hub = hub2
            for n in range(4, 6):
                await sender.send("svc", "n", n)
            await sender.flush()
            async with hub2.hub.local("svc") as again:
                got = [(await again.receive()).data for _ in range(5)]
                assert got == [1, 2, 3, 4, 5]
                with trio.move_on_after(5):
                    extra = await again.receive()
                    pytest.fail(f"delivered twice: {extra}")
            await sender.aclose()
            n2.cancel_scope.cancel()
        outer.cancel_scope.cancel()


async def test_a_client_with_the_same_id_takes_the_session_over(nursery: trio.Nursery) -> None:
    """As between two clients: the local component's run() ends with 4001."""
    hub = await start_memory_hub(nursery)
    svc = hub.hub.local("svc")
    ended: list[ConnectionClosed] = []

    async def run_svc(task_status: trio.TaskStatus[None]) -> None:
        try:
            await svc.run(task_status=task_status)
        except ConnectionClosed as exc:
            ended.append(exc)

    await nursery.start(run_svc)
    async with hub.client("svc") as remote:
        assert await remote.presence("nothing") == []  # the client's link is up
    assert [e.code for e in ended] == [4001]


async def test_the_hub_asks_a_local_component(nursery: trio.Nursery) -> None:
    """``hub.request`` reaches local components too; ``end_session`` forgets it."""
    hub = await start_memory_hub(nursery)
    async with hub.hub.local("svc") as svc:

        @svc.on("status")
        async def status(message: Message) -> dict[str, str]:
            return {"ok": "yes"}

        assert await hub.hub.request("svc", "status") == {"ok": "yes"}
        await svc.aclose(end_session=True)
    with pytest.raises(UnknownComponent):
        hub.hub.component("svc")


async def test_a_burst_of_sends_without_a_store_yields_every_send_turns(
    nursery: trio.Nursery,
) -> None:
    """Without a store, a sender in a loop lets other tasks run once per SEND_TURNS sends
    (not once per message), every send is still a cancellation point (a cancelled one
    takes no effect), and the burst arrives exactly once, in order."""
    hub = await start_memory_hub(nursery)
    n = 4 * SEND_TURNS
    passes = 0
    got: list[int] = []
    drained = trio.Event()

    async def other() -> None:  # counts the sender's schedule points
        nonlocal passes
        while True:
            await trio.lowlevel.checkpoint()
            passes += 1

    async with hub.hub.local("src") as src, hub.hub.local("sink") as sink:

        async def drain() -> None:
            while len(got) < n:
                got.append((await sink.receive()).data)
            drained.set()

        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        passes = 0
        for i in range(n):
            await src.send("sink", "n", i)
        assert 1 <= passes <= n // SEND_TURNS + 1, passes
        with trio.CancelScope() as scope:
            scope.cancel()
            await src.send("sink", "late", None)
            pytest.fail("send() is not a cancellation point")
        assert scope.cancelled_caught
        await drained.wait()
        await src.send("sink", "end", None)
        assert (await sink.receive()).type == "end"  # the cancelled send took no effect
    assert got == list(range(n))


async def test_the_hub_taking_the_session_away_ends_async_with_cleanly(
    nursery: trio.Nursery,
) -> None:
    """An operator's disconnect (or a client taking the id over) ends ``async with
    hub.local(...)`` with ConnectionClosed, the block cancelled; it used to corrupt
    Trio's nursery stack. The hub's own ``anon-`` ids are refused."""
    hub = await start_memory_hub(nursery)

    async def disconnected() -> None:
        async with hub.hub.local("svc"):
            hub.hub.disconnect("svc")
            await trio.sleep_forever()

    async def replaced() -> None:
        async with hub.hub.local("svc"), hub.client("svc"):  # a client takes the id over
            await trio.sleep_forever()

    with pytest.raises(ConnectionClosed) as closed:
        await disconnected()
    assert closed.value.code == CloseCode.NORMAL
    with pytest.raises(ConnectionClosed) as taken:
        await replaced()
    assert taken.value.code == CloseCode.REPLACED
    with pytest.raises(ValueError, match="anon-"):
        hub.hub.local("anon-0123456789ab")
