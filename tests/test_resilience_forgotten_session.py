"""Regression: a session the hub forgot, while the client's inbox still held its messages.

The client's inbox tags each message with a *generation* (bumped whenever
sequence numbers restart: a new session or a new epoch), and the dispatcher
releases ``seq`` only for the current generation. It used to tag with the
epoch alone, but a *new session* (new sid) also starts at epoch 1: when the
hub had forgotten the session (``session_expiry``, a hub restart without a
store, a 4007 reset), messages still queued from the old session carried the
same epoch as the new one, and releasing their numbers against the fresh
tracker raised ``LocalProtocolError`` and took the client down.
"""

from __future__ import annotations

import trio
import trio.testing

from genesis_trio import Connected, HubConfig, LinkEvent
from genesis_trio.testing import LinkFaults, start_memory_hub


async def test_messages_queued_before_a_forgotten_session_are_delivered(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = await start_memory_hub(nursery, HubConfig(session_expiry=2.0, retention_seconds=100.0))
    faults = LinkFaults()
    connects: list[Connected] = []
    new_session = trio.Event()

    def on_link_event(event: LinkEvent) -> None:
        if isinstance(event, Connected):
            connects.append(event)
            if len(connects) > 1 and event.sid != connects[0].sid:
                new_session.set()

    with trio.fail_after(600):  # virtual time
        async with (
            hub.client("a", faults=faults, inbox_size=1, on_link_event=on_link_event) as a,
            hub.client("b") as b,
        ):
            for i in range(5):
                await b.send("a", "n", i)
            await b.flush()
            await trio.sleep(1)  # "a" has received all 5; its application took none yet
            faults.refuse = 10  # the breaker opens: away for 30 s, the hub forgets "a"
            faults.cut()
            await new_session.wait()
            assert not connects[-1].recovered
            assert connects[0].epoch == connects[-1].epoch == 1  # new session, same epoch
            got = [(await a.receive()).data for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]
            await b.send("a", "n", 5)
            assert (await a.receive()).data == 5
