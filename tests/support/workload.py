"""The exchange workload the chaos and crash tests share: numbered messages between peers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from genesis_trio import TranscendentalWebSocket
from genesis_trio.testing import DeliveryChecker


async def exchange(
    clients: Sequence[TranscendentalWebSocket],
    peer: Callable[[int], int],
    messages: int,
    checker: DeliveryChecker,
    *,
    pause: Callable[[int, int], float] = lambda i, n: 0.0,
    delivered: Callable[[], None] = lambda: None,
) -> None:
    """Client ``i`` sends ``messages`` numbered messages to ``clients[peer(i)]``.

    Every client also receives as many (``peer`` must be a permutation) and
    records each in ``checker``; returns when all have arrived. ``pause(i,
    n)`` is slept after message ``n`` of client ``i`` (pacing), and
    ``delivered`` is called after each delivery.
    """
    names = [ws.component_id for ws in clients]
    remaining = len(clients)
    done = trio.Event()

    async def pump(i: int) -> None:
        target = names[peer(i)]
        for n in range(messages):
            await clients[i].send(target, "n", n)
            checker.sent((names[i], target), n)
            seconds = pause(i, n)
            if seconds:
                await trio.sleep(seconds)

    async def drain(i: int) -> None:
        nonlocal remaining
        for _ in range(messages):
            message = await clients[i].receive()
            checker.delivered((message.sender, names[i]), message.data)
            delivered()
        remaining -= 1
        if remaining == 0:
            done.set()

    async with trio.open_nursery() as nursery:
        for i in range(len(clients)):
            nursery.start_soon(pump, i)
            nursery.start_soon(drain, i)
        await done.wait()
        nursery.cancel_scope.cancel()
