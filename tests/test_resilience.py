"""Reconnection, resume, heartbeats, breaker and backpressure on the mock clock.

Every test runs a real hub (Hypercorn protocol stack + ASGI app) over
in-memory streams from ``genesis_trio.testing``, so minutes of heartbeats and
backoff take milliseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from genesis_trio import (
    CloseCode,
    Connected,
    Disconnected,
    LinkEvent,
    Message,
    SendTimeout,
)
from genesis_trio.testing import DeliveryChecker, LinkFaults, MemoryHub, start_memory_hub


def fixed(*delays: float) -> Iterable[float]:
    return itertools.chain(delays, itertools.repeat(delays[-1]))


class Events:
    """Records link events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[LinkEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: LinkEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: object) -> LinkEvent:
        assert callable(predicate)
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            await self._changed.wait()

    @property
    def connects(self) -> list[Connected]:
        return [e for e in self.events if isinstance(e, Connected)]

    @property
    def disconnects(self) -> list[Disconnected]:
        return [e for e in self.events if isinstance(e, Disconnected)]


@pytest.fixture
async def mhub(nursery: trio.Nursery) -> MemoryHub:
    return await start_memory_hub(nursery)


async def test_cut_links_resume_exactly_once_both_ways(
    mhub: MemoryHub, autojump_clock: trio.testing.MockClock
) -> None:
    fa, fb = LinkFaults(), LinkFaults()
    ea, eb = Events(), Events()
    checker = DeliveryChecker()
    async with (
        mhub.client("a", faults=fa, on_link_event=ea) as a,
        mhub.client("b", faults=fb, on_link_event=eb) as b,
    ):

        async def pump(ws: object, peer: str, faults: LinkFaults, other: LinkFaults) -> None:
            assert hasattr(ws, "send")
            for n in range(300):
                await ws.send(peer, "n", n)
                checker.sent((ws.component_id, peer), n)  # type: ignore[attr-defined]
                if n % 37 == 0:
                    faults.cut()
                if n % 53 == 0:
                    other.cut()
                if n % 10 == 0:
                    await trio.sleep(0.05)

        async def drain(ws: object, peer: str) -> None:
            assert hasattr(ws, "receive")
            for _ in range(300):
                msg = await ws.receive()
                checker.delivered((peer, ws.component_id), msg.data)  # type: ignore[attr-defined]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, "b", fa, fb)
            nursery.start_soon(pump, b, "a", fb, fa)
            nursery.start_soon(drain, a, "b")
            nursery.start_soon(drain, b, "a")
    report = checker.report()
    assert report.ok, report
    assert report.delivered == 600
    assert fa.cuts + fb.cuts >= 5
    resumes = ea.connects[1:] + eb.connects[1:]
    assert len(resumes) >= 5
    assert all(c.recovered for c in resumes)
    stats = mhub.hub.statistics()
    assert stats.resumes_recovered == len(resumes)
    assert stats.resumes_failed == 0


async def test_send_during_outage_is_delivered_after_resume(
    mhub: MemoryHub, autojump_clock: trio.testing.MockClock
) -> None:
    faults = LinkFaults()
    events = Events()
    async with (
        mhub.client(
            "a", faults=faults, on_link_event=events, backoff_factory=lambda: fixed(1.0)
        ) as a,
        mhub.client("b") as b,
    ):
        faults.refuse = 3
        faults.cut()
        await events.wait_for(lambda e: isinstance(e, Disconnected))
        start = trio.current_time()
        for n in range(10):
            await a.send("b", "n", n)  # the buffer has room: returns at once
        assert trio.current_time() == start
        assert a.state in ("disconnected", "connecting")
        assert [(await b.receive()).data for _ in range(10)] == list(range(10))
        resumed = events.connects[-1]
        assert resumed.recovered
        assert resumed.replayed == 10
        assert a.statistics().connect_failures == 3


async def test_full_buffer_makes_send_wait_then_time_out(
    mhub: MemoryHub, autojump_clock: trio.testing.MockClock
) -> None:
    faults = LinkFaults()
    events = Events()
    async with mhub.client(
        "a", faults=faults, on_link_event=events, max_pending=5, send_timeout=3.0
    ) as a:
        faults.refuse = 10**6
        faults.cut()
        await events.wait_for(lambda e: isinstance(e, Disconnected))
        for n in range(5):
            await a.send("a", "n", n)
        start = trio.current_time()
        with pytest.raises(SendTimeout):
            await a.send("a", "n", 5)
        assert trio.current_time() - start == pytest.approx(3.0)
        assert a.statistics().pending == 5


async def test_silent_network_detected_by_both_sides(
    mhub: MemoryHub, autojump_clock: trio.testing.MockClock
) -> None:
    faults = LinkFaults()
    events = Events()
    async with mhub.client("a", faults=faults, on_link_event=events) as a:
        await a.send("a", "hello", 1)
        assert (await a.receive()).data == 1
        faults.stall()
        stalled_at = trio.current_time()
        down = await events.wait_for(lambda e: isinstance(e, Disconnected))
        assert isinstance(down, Disconnected)
        assert down.code == CloseCode.HEARTBEAT_TIMEOUT
        # interval (5 s) + grace: clamped to the 2 s floor on a fast link
        assert trio.current_time() - stalled_at <= 5 + 2 + 5
        # The hub's own dead-peer timeout (interval + grace, at most 5 + 30 s)
        # fires within 40 s of virtual time: the client's close was black-holed too.
        await trio.sleep(40)
        assert mhub.hub.statistics().heartbeat_timeouts == 1
        faults.unstall()
        up = await events.wait_for(lambda e: isinstance(e, Connected) and not e.first)
        assert isinstance(up, Connected)
        assert up.recovered


async def test_circuit_breaker_opens_and_half_opens(
    mhub: MemoryHub, autojump_clock: trio.testing.MockClock
) -> None:
    faults = LinkFaults()
    events = Events()
    ws = mhub.client(
        "a",
        faults=faults,
        on_link_event=events,
        backoff_factory=lambda: fixed(1.0),
        breaker_threshold=3,
        breaker_reset=20.0,
    )
    faults.refuse = 4
    states: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.run)
        up = trio.Event()
        ws.add_link_listener(lambda e: up.set() if isinstance(e, Connected) else None)

        async def watch() -> None:
            while not up.is_set():
                states.append((trio.current_time(), ws.statistics().breaker))
                await trio.sleep(0.5)

        nursery.start_soon(watch)
        await up.wait()
        # Failures at 0, 1, 2 open the breaker; the half-open trial at 22 fails
        # (the 4th refusal) and reopens it; the next trial at 42 succeeds.
        assert trio.current_time() == 42
        assert "open" in {s for _, s in states}
        assert ws.statistics().breaker == "closed"
        assert ws.statistics().connect_failures == 4
        await ws.aclose()


async def test_gap_outside_retention_is_reported_not_silent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    mhub = await start_memory_hub(nursery, retention_messages=5)
    faults = LinkFaults()
    events = Events()
    async with (
        mhub.client("a") as a,
        mhub.client(
            "b", faults=faults, on_link_event=events, backoff_factory=lambda: fixed(30)
        ) as b,
    ):
        await a.send("b", "n", 0)
        assert (await b.receive()).data == 0
        await trio.sleep(1)  # virtual time: b's acknowledgement (ack_delay) reaches the hub
        epoch = b.epoch
        faults.refuse = 1
        faults.cut()
        await events.wait_for(lambda e: isinstance(e, Disconnected))
        for n in range(1, 11):
            await a.send("b", "n", n)
        await a.flush()
        up = await events.wait_for(lambda e: isinstance(e, Connected) and not e.first)
        assert isinstance(up, Connected)
        assert up.recovered is False
        assert b.epoch == epoch + 1
        got = [(await b.receive()).data for _ in range(5)]
        assert got == [6, 7, 8, 9, 10]  # what retention kept, in order; 1-5 were evicted
        assert mhub.hub.statistics().messages_evicted == 5
        assert b.statistics().resumes_failed == 1


async def test_age_retention_and_session_expiry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    mhub = await start_memory_hub(nursery, retention_seconds=10, session_expiry=120)
    faults = LinkFaults()
    events = Events()
    async with (
        mhub.client("a") as a,
        mhub.client(
            "b", faults=faults, on_link_event=events, backoff_factory=lambda: fixed(50)
        ) as b,
    ):
        sid, epoch = b.session_id, b.epoch
        faults.refuse = 1
        faults.cut()  # back after 50 s (refused) + 50 s = 100 s: inside session_expiry
        await a.send("b", "n", 1)  # 100 s old when b returns: beyond retention_seconds
        up = await events.wait_for(lambda e: isinstance(e, Connected) and not e.first)
        assert isinstance(up, Connected)
        assert not up.recovered
        assert (b.session_id, b.epoch) == (sid, epoch + 1)  # same session, new epoch
        assert mhub.hub.statistics().messages_evicted == 1
        faults.refuse = 2
        faults.cut()  # back after 150 s: the session has expired
        up2 = await events.wait_for(
            lambda e: isinstance(e, Connected) and e is not up and not e.first
        )
        assert isinstance(up2, Connected)
        assert not up2.recovered
        assert b.session_id != sid
        assert mhub.hub.statistics().sessions_expired == 1


async def test_slow_consumer_is_closed_with_4004(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    mhub = await start_memory_hub(
        nursery, window=10, retention_messages=20, slow_consumer_timeout=5.0
    )
    events = Events()
    release = trio.Event()
    async with (
        mhub.client("fast") as fast,
        mhub.client("slow", on_link_event=events) as slow,
        mhub.client("other") as other,
    ):

        @slow.on("n")
        async def stuck(message: Message) -> None:
            await release.wait()

        for n in range(25):
            await fast.send("slow", "n", n)  # 20 fit; the 21st waits, then 4004
        down = await events.wait_for(lambda e: isinstance(e, Disconnected))
        assert isinstance(down, Disconnected)
        assert down.code == CloseCode.SLOW_CONSUMER
        assert mhub.hub.statistics().slow_consumers_closed == 1
        await fast.send("other", "still", "working")
        assert (await other.receive()).data == "working"
        release.set()


async def test_hub_restart_without_durable_store_is_reported(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    first = await start_memory_hub(nursery)
    second = await start_memory_hub(nursery)
    current = [first]

    async def factory(host: str, port: int) -> trio.abc.Stream:
        return await current[0].open_stream()

    events = Events()
    from genesis_trio import TranscendentalWebSocket

    async with TranscendentalWebSocket(
        "ws://x/ws", "a", stream_factory=factory, on_link_event=events
    ) as a:
        old_sid = a.session_id
        current[0] = second
        first.hub.close_all()  # the node goes away (1001)
        up = await events.wait_for(lambda e: isinstance(e, Connected) and not e.first)
        assert isinstance(up, Connected)
        assert up.recovered is False
        assert a.session_id != old_sid
        assert events.disconnects[0].code == CloseCode.GOING_AWAY


async def test_pings_are_answered_while_the_application_is_stalled(
    mhub: MemoryHub, autojump_clock: trio.testing.MockClock
) -> None:
    events = Events()
    release = trio.Event()
    async with (
        mhub.client("sender") as sender,
        mhub.client("stuck", on_link_event=events, inbox_size=2) as stuck,
    ):

        @stuck.on("work")
        async def work(message: Message) -> None:
            await release.wait()  # the application stalls for ten minutes

        for n in range(5):
            await sender.send("stuck", "work", n)
        await trio.sleep(600)
        # The reader kept answering the hub's pings (and the heartbeat kept
        # pinging) although the dispatcher never returned: no link was lost.
        assert events.disconnects == []
        assert mhub.hub.statistics().heartbeat_timeouts == 0
        assert stuck.statistics().rtt_ewma_ms is not None
        assert stuck.statistics().inbox == 4  # the first message is in the handler
        release.set()
        await sender.send("stuck", "work", 5)
        await sender.flush()
