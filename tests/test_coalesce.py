"""Adaptive coalescing: decisions on explicit clocks, and batching end to end."""

from __future__ import annotations

import trio

from genesis_trio._core.coalesce import Coalescer
from genesis_trio.testing import LinkFaults, start_memory_hub


def feed(c: Coalescer, rate: float, seconds: float = 0.05, start: float = 0.0) -> float:
    """Let the coalescer observe a steady arrival rate; return the end time."""
    now, total = start, 0
    step = 0.001
    while now < start + seconds:
        now += step
        total += int(rate * step)
        c.observe(now, total)
    return now


def test_low_rate_never_waits() -> None:
    c = Coalescer()
    now = feed(c, rate=500)
    assert c.rate < c.min_rate
    assert c.delay(1) == 0.0
    assert c.should_wait(now, 10**6, 1) is False


def test_high_rate_waits_for_a_batch_bounded_by_max_delay() -> None:
    c = Coalescer(max_delay=0.001, target=64)
    feed(c, rate=200_000)
    assert c.rate > 100_000
    assert 0.0 < c.delay(1) <= 0.001
    assert c.delay(64) == 0.0  # a full batch is there: write now
    c2 = Coalescer(max_delay=0.001, target=64)
    feed(c2, rate=10_000)
    assert c2.delay(1) == 0.001  # the wait would be longer than max_delay: capped


def test_waiting_ends_when_passes_bring_nothing() -> None:
    c = Coalescer()
    now = feed(c, rate=100_000)
    appended = 10**6
    assert c.should_wait(now, appended, 1) is True  # starts waiting
    assert c.should_wait(now, appended + 3, 4) is True  # grew: keep waiting
    assert c.should_wait(now, appended + 3, 4) is True  # one empty pass is tolerated
    assert c.should_wait(now, appended + 3, 4) is False  # two: the producer is done


def test_waiting_ends_at_the_deadline_or_target() -> None:
    c = Coalescer(max_delay=0.001, target=8)
    now = feed(c, rate=10_000)  # waits (8 - 1) / 10 000 s = 0.7 ms at most
    total = 10**6
    assert c.should_wait(now, total, 1)
    assert c.should_wait(now + 0.0005, total + 1, 2)
    assert not c.should_wait(now + 0.002, total + 2, 3)  # past max_delay
    assert c.should_wait(now + 0.01, total + 3, 1)
    assert not c.should_wait(now + 0.01, total + 20, 8)  # target reached


def test_rate_restarts_with_a_new_epoch() -> None:
    c = Coalescer()
    now = feed(c, rate=100_000)
    c.observe(now + 0.001, 5)  # the count restarted below what was seen
    assert c.rate >= 0.0


async def test_streams_of_sends_leave_in_batches(nursery: trio.Nursery) -> None:
    """What piles up while a frame is on the wire leaves in the next frame, both ways.

    Each chunk takes 2 ms on this link (LinkFaults.delay), so the sender's
    messages pile up behind every frame: batching is what keeps up.
    """
    memory = await start_memory_hub(nursery)
    async with memory.client("streamer", faults=LinkFaults(delay=0.002)) as ws:
        n = 2000

        async def sender() -> None:
            for i in range(n):
                await ws.send("streamer", "n", i)

        async with trio.open_nursery() as inner:
            inner.start_soon(sender)
            got = [(await ws.receive()).data for _ in range(n)]
        assert got == list(range(n))
        client = ws.statistics()
        hub_stats = memory.hub.statistics()
        assert client.collapse_factor > 5.0, client
        assert hub_stats.collapse_factor > 5.0, hub_stats
