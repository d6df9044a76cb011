"""The hub process is SIGKILLed mid-traffic and restarted on the same port and file.

Clients reconnect and resume: nothing lost, duplicated or reordered; a
later reconnect replays nothing.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import signal
import sqlite3

import pytest
import trio

from genesis_trio import Connected, LinkEvent, TranscendentalWebSocket, backoff
from genesis_trio.testing import DeliveryChecker

from .support.processes import free_port, start_cli_hub
from .support.redis import redis_server
from .support.workload import exchange

PAIRS = 3
MESSAGES = 1500
KILL_AT = (0.25, 0.6)  # fractions of all messages delivered when the hub is killed


class Counter:
    """A count that tasks can wait on."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = trio.Event()

    def add(self, n: int = 1) -> None:
        self.value += n
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, target: int) -> None:
        while self.value < target:
            await self._changed.wait()


async def stored_entries(kind: str, spec: str) -> int:
    """Log chunks the store holds (none once everything is acknowledged and trimmed)."""
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(spec.removeprefix("sqlite:"))) as db:
            count: int = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            return count
    import coredis

    async with coredis.Redis.from_url(spec) as redis:
        return sum([await redis.zcard(key) for key in await redis.keys("genesis:log:*")])


@pytest.mark.slow
@pytest.mark.deadline(90)
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_sigkill_mid_traffic_loses_nothing(kind: str, tmp_path: pathlib.Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if kind == "redis":
            spec = (await stack.enter_async_context(redis_server())).url
        else:
            spec = f"sqlite:{tmp_path / 'hub.sqlite3'}"
        await _crash(kind, spec, stack)


async def _crash(kind: str, spec: str, stack: contextlib.AsyncExitStack) -> None:
    port = free_port()
    args = ("--store", spec, "--node-id", "crashy")
    checker = DeliveryChecker()
    connects: list[tuple[str, Connected]] = []
    names = [f"p{i}" for i in range(2 * PAIRS)]
    delivered = Counter()
    links = Counter()
    per_client: dict[str, int] = dict.fromkeys(names, 0)
    killer_done = trio.Event()

    def listener(name: str) -> object:
        def on(event: LinkEvent) -> None:
            if isinstance(event, Connected):
                connects.append((name, event))
                per_client[name] += 1
                links.add()

        return on

    hub = await stack.enter_async_context(start_cli_hub(*args, port=port))
    url = hub.url
    clients = [
        await stack.enter_async_context(
            TranscendentalWebSocket(
                url,
                name,
                on_link_event=listener(name),  # type: ignore[arg-type]
                backoff_factory=functools.partial(backoff, 0.05, 2.0, 0.5),
                breaker_threshold=1000,
            )
        )
        for name in names
    ]

    kills = 0

    async def killer() -> None:
        nonlocal hub, kills
        total = len(names) * MESSAGES
        for fraction in KILL_AT:
            await delivered.wait_for(int(fraction * total))
            hub.process.send_signal(signal.SIGKILL)
            await hub.process.wait()
            kills += 1
            hub = await stack.enter_async_context(start_cli_hub(*args, port=port))
            while min(per_client.values()) < kills + 1:  # every client resumed
                await links.wait_for(links.value + 1)
        killer_done.set()

    async with trio.open_nursery() as work:
        work.start_soon(killer)
        await exchange(
            clients,
            lambda i: i ^ 1,
            MESSAGES,
            checker,
            pause=lambda i, n: 0.005 if n % 100 == 99 else 0.0,
            delivered=delivered.add,
        )
        await killer_done.wait()
        work.cancel_scope.cancel()

    report = checker.report()
    assert kills == len(KILL_AT)
    assert report.sent == len(names) * MESSAGES
    assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0, 0, 0, 0)
    resumes = [event for _, event in connects if not event.first]
    assert min(per_client.values()) >= kills + 1
    assert all(event.recovered for event in resumes), resumes

    # Everything is delivered and acknowledged: a clean restart replays nothing.
    for ws in clients:
        with trio.fail_after(10):
            await ws.flush()
    # The clients' acknowledgements travel after ack_delay; the hub trims its
    # store when they arrive. Wait for that condition in the store itself.
    with trio.fail_after(10):
        while await stored_entries(kind, spec):  # noqa: ASYNC110
            await trio.sleep(0.02)  # another process's store: nothing else to wait on
    before = {ws.component_id: ws.statistics() for ws in clients}
    seen = len(connects)
    wanted = {name: count + 1 for name, count in per_client.items()}
    hub.process.send_signal(signal.SIGTERM)
    assert await hub.process.wait() == 0
    hub = await stack.enter_async_context(start_cli_hub(*args, port=port))
    with trio.fail_after(20):
        while any(per_client[name] < wanted[name] for name in names):
            await links.wait_for(links.value + 1)
    again = [event for _, event in connects[seen:]]
    assert len(again) == len(names), again
    assert all(event.recovered and event.replayed == 0 for event in again), again
    for i, ws in enumerate(clients):  # a round trip proves nothing else was queued first
        await ws.send(ws.component_id, "sync", i)
        message = await ws.receive()
        assert (message.type, message.data) == ("sync", i)
        after = ws.statistics()
        assert after.duplicates_dropped == before[ws.component_id].duplicates_dropped
        assert after.messages_received == before[ws.component_id].messages_received + 1
    print(f"\ncrash test: {report}, kills={kills}, resumes={len(resumes)}")
