"""The hub's link writer runs only while there is something to write (issue 15).

An idle link keeps no writer task; yet its pings, its delayed
acknowledgements and its deliveries leave on time, because the reader's
receive timer (or the wake-up of a new message) starts the writer again.
A raw client written from docs/protocol.md watches the wire.
"""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from genesis_trio.testing import MemoryHub, start_memory_hub

from .support.rawws import RawLink

INTERVAL = 4.0


def writer_tasks() -> int:
    """How many link writer tasks run in this Trio run."""

    def walk(task: trio.lowlevel.Task) -> int:
        n = int(task.coro.cr_code.co_name == "_write_until_gone")  # type: ignore[attr-defined]
        for nursery in task.child_nurseries:
            n += sum(walk(child) for child in nursery.child_tasks)
        return n

    return walk(trio.lowlevel.current_root_task())


async def raw(memory: MemoryHub, cid: str) -> RawLink:
    link = await RawLink.upgrade(await memory.open_stream(), "memory-hub")
    welcome = await link.hello(cid)
    assert welcome["t"] == "welcome"
    return link


async def test_an_idle_link_keeps_no_writer_task(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery, heartbeat_interval=60.0)
        links = [await raw(memory, f"idle-{n}") for n in range(20)]
        await trio.sleep(1.0)  # past the writers' linger
        await trio.testing.wait_all_tasks_blocked()
        assert writer_tasks() == 0
        # A message starts one writer, which delivers it, lingers, and ends.
        await memory.hub.send("idle-7", "note", 1)
        frame = await links[7].next("msg")
        assert frame["m"]["data"] == 1
        assert writer_tasks() == 1
        await trio.sleep(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert writer_tasks() == 0
        nursery.cancel_scope.cancel()


async def test_an_idle_link_is_still_pinged_on_schedule(autojump_clock: object) -> None:
    """The hub pings a silent link every interval, with no writer task in between."""
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(
            nursery, heartbeat_interval=INTERVAL, heartbeat_floor=1.0, heartbeat_ceiling=INTERVAL
        )
        link = await raw(memory, "quiet")
        started = trio.current_time()
        pings = []
        while len(pings) < 4:
            frame = await link.next("ping")
            pings.append(trio.current_time() - started)
            await link.send({"t": "pong", "id": frame["id"]})
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(abs(gap - INTERVAL) < 0.5 for gap in gaps), gaps
        await trio.sleep(1.0)  # past the linger of the writer that sent the last ping
        await trio.testing.wait_all_tasks_blocked()
        assert writer_tasks() == 0
        assert memory.hub.statistics().heartbeat_timeouts == 0
        nursery.cancel_scope.cancel()


async def test_a_delayed_acknowledgement_leaves_on_time_from_an_idle_link(
    autojump_clock: object,
) -> None:
    """A message close behind another is acknowledged after ack_delay (docs/protocol.md
    §2.4), by a writer the reader's clock starts: not at once, not at the next ping."""
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery, ack_delay=0.5, heartbeat_interval=60.0)
        await raw(memory, "sink")
        sender = await raw(memory, "sender")
        await sender.send({"t": "msg", "seq": 1, "m": {"type": "x", "to": "sink"}})
        assert (await sender.next("ack"))["seq"] == 1  # isolated: at once
        await trio.sleep(0.3)  # the writer's linger (0.25 s) is over; the delay (0.5 s) is not
        await trio.testing.wait_all_tasks_blocked()
        assert writer_tasks() == 0
        await sender.send({"t": "msg", "seq": 2, "m": {"type": "x", "to": "sink"}})
        sent = trio.current_time()
        assert (await sender.next("ack"))["seq"] == 2
        assert trio.current_time() - sent == pytest.approx(0.5, abs=0.01)  # ack_delay
        nursery.cancel_scope.cancel()
