"""Test your genesis_trio application deterministically, without sockets.

:class:`MemoryHub` runs a real hub -- the same Hypercorn protocol stack,
the same ASGI app -- over in-memory Trio streams, so tests can run on
``trio.testing.MockClock`` (``autojump_clock``) and finish in milliseconds of
real time even when they cover minutes of heartbeats and backoff.
:class:`LinkFaults` injects network faults into a client's links: cut,
stall (a silent network), added latency, a truncated frame, refused
connections.

Example::

    async def test_resume(nursery, autojump_clock):
        hub = await start_memory_hub(nursery)
        faults = LinkFaults()
        async with hub.client("a", faults=faults) as a, hub.client("b") as b:
            await a.send("b", "n", 1)
            faults.cut()                      # the link drops
            await a.send("b", "n", 2)         # buffered, replayed after resume
            assert [(await b.receive()).data for _ in range(2)] == [1, 2]
"""

from ._checker import CheckReport as CheckReport
from ._checker import DeliveryChecker as DeliveryChecker
from ._faults import FaultyStream as FaultyStream
from ._faults import LinkFaults as LinkFaults
from ._memory import MemoryHub as MemoryHub
from ._memory import RunningHub as RunningHub
from ._memory import start_hub as start_hub
from ._memory import start_memory_hub as start_memory_hub

__all__ = [
    "CheckReport",
    "DeliveryChecker",
    "FaultyStream",
    "LinkFaults",
    "MemoryHub",
    "RunningHub",
    "start_hub",
    "start_memory_hub",
]
