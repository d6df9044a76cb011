"""A seeded chaos scenario: many clients, a ring of numbered messages, random faults.

Used by tests/test_chaos.py (CI size; pass other sizes to run bigger). Runs on
the caller's Trio clock: with ``MockClock(autojump_threshold=0)`` every timer
(heartbeats, backoff, stalls) is virtual, and with Trio's scheduler seeded
(Hypothesis' Trio integration makes it deterministic) the whole run is a
function of the seed.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from genesis_trio import Connected, LinkEvent, backoff
from genesis_trio.testing import CheckReport, DeliveryChecker, LinkFaults, start_memory_hub

from .workload import exchange


@attrs.frozen
class ChaosResult:
    """What one chaos run did and what the checker found."""

    report: CheckReport
    faults_injected: int
    cuts: int
    truncations: int
    stalls: int
    resumes: int
    resumes_not_recovered: int
    hub_stats: dict[str, Any]
    virtual_seconds: float
    fingerprint: tuple[Any, ...]


def schedule(seed: int) -> Iterable[float]:
    """A seeded reconnect schedule: 50 ms doubling to 2 s, full jitter."""
    return backoff(0.05, 2.0, 2.0, rng=random.Random(seed))


def seed_trio_scheduler(seed: int) -> None:
    """Make Trio's task scheduling a function of ``seed`` (test-only private hook)."""
    from trio._core import _run

    _run._r.seed(seed)


async def run_chaos(
    seed: int, *, clients: int = 100, messages: int = 1000, max_faults: int = 400
) -> ChaosResult:
    """Run the scenario; returns when every client received every message."""
    rng = random.Random(seed)
    checker = DeliveryChecker()
    faults = [LinkFaults() for _ in range(clients)]
    resumes: list[Connected] = []
    stalls = 0
    injected = 0
    start = trio.current_time()

    def on_event(event: LinkEvent) -> None:
        if isinstance(event, Connected) and not event.first:
            resumes.append(event)

    async with trio.open_nursery() as nursery:
        hub = await start_memory_hub(nursery)
        names = [f"c{i:03d}" for i in range(clients)]
        sockets = [
            hub.client(
                names[i],
                faults=faults[i],
                on_link_event=on_event,
                backoff_factory=functools.partial(schedule, seed * 1000 + i),
            )
            for i in range(clients)
        ]
        pauses = [random.Random(seed * 7919 + i) for i in range(clients)]

        def pause(i: int, n: int) -> float:
            return pauses[i].uniform(0.0, 0.2) if n % 50 == 49 else 0.0

        async def stall(f: LinkFaults, seconds: float) -> None:
            f.stall()
            await trio.sleep(seconds)
            f.unstall()

        async def monkey() -> None:
            nonlocal stalls, injected
            for _ in range(max_faults):
                await trio.sleep(rng.uniform(0.005, 0.05))
                f = faults[rng.randrange(clients)]
                roll = rng.random()
                injected += 1
                if roll < 0.75:
                    f.cut()
                elif roll < 0.9:
                    f.truncate_next()
                elif not f.stalled:
                    stalls += 1
                    nursery.start_soon(stall, f, rng.uniform(1.0, 12.0))

        async with contextlib.AsyncExitStack() as stack:
            for ws in sockets:
                await stack.enter_async_context(ws)
            async with trio.open_nursery() as work:
                work.start_soon(monkey)
                await exchange(sockets, lambda i: (i + 1) % clients, messages, checker, pause=pause)
                work.cancel_scope.cancel()
            for f in faults:
                f.unstall()
        stats = hub.hub.get_stats()
        nursery.cancel_scope.cancel()

    report = checker.report()
    not_recovered = sum(1 for r in resumes if not r.recovered)
    fingerprint = (
        report,
        injected,
        sum(f.cuts for f in faults),
        len(resumes),
        stats["messages_replayed"],
        stats["duplicates_dropped"],
        stats["delivery_frames"],
    )
    return ChaosResult(
        report=report,
        faults_injected=injected,
        cuts=sum(f.cuts for f in faults),
        truncations=sum(f.truncations for f in faults),
        stalls=stalls,
        resumes=len(resumes),
        resumes_not_recovered=not_recovered,
        hub_stats=stats,
        virtual_seconds=trio.current_time() - start,
        fingerprint=fingerprint,
    )
