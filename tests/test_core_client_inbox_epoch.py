"""Regression: the client's inbox tags messages with the epoch only.

``TranscendentalWebSocket`` queues accepted messages as ``(epoch, seq, body)``
and its dispatcher releases ``seq`` when ``epoch == session.epoch``. A *new
session* (new sid) also starts at epoch 1, so when the hub has forgotten the
session (``session_expiry``, a hub restart without a store, or a 4007 reset)
messages still queued from the old session carry the same epoch number as the
new one; releasing their sequence numbers against the fresh InboundTracker
raises ``LocalProtocolError`` in the dispatcher and takes the client down
(or, once enough new messages arrived, acknowledges messages of the new
session that the application has not seen).
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
