"""Chaos over real loopback sockets: a TCP proxy that cuts connections at random."""

from __future__ import annotations

import contextlib
import functools
import random

import pytest
import trio

from genesis_trio import Connected, LinkEvent, TranscendentalWebSocket, backoff
from genesis_trio.testing import DeliveryChecker, RunningHub

from .support.workload import exchange

CLIENTS = 50
MESSAGES = 500
MAX_CUTS = 60


class CuttingProxy:
    """Forwards TCP connections to ``target_port``; :meth:`cut_one` kills a random one."""

    def __init__(self, target_port: int, rng: random.Random) -> None:
        self.target_port = target_port
        self.rng = rng
        self.live: list[trio.CancelScope] = []
        self.cuts = 0
        self.accepted = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        scope = trio.CancelScope()
        self.live.append(scope)
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await downstream.aclose()
            return
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, upstream, downstream, nursery.cancel_scope)
        finally:
            with contextlib.suppress(ValueError):
                self.live.remove(scope)
            with trio.CancelScope(shield=True):
                await upstream.aclose()
                await downstream.aclose()

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()

    def cut_one(self) -> bool:
        if not self.live:
            return False
        self.rng.choice(self.live).cancel()
        self.cuts += 1
        return True


@pytest.mark.slow
@pytest.mark.deadline(60)
async def test_real_sockets_cut_at_random_lose_nothing(hub: RunningHub) -> None:
    rng = random.Random(4242)
    proxy = CuttingProxy(hub.info.port, rng)
    checker = DeliveryChecker()
    resumes: list[Connected] = []

    def on_event(event: LinkEvent) -> None:
        if isinstance(event, Connected) and not event.first:
            resumes.append(event)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        url = f"ws://127.0.0.1:{port}/ws"
        names = [f"s{i:02d}" for i in range(CLIENTS)]
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    TranscendentalWebSocket(
                        url,
                        name,
                        on_link_event=on_event,
                        backoff_factory=functools.partial(backoff, 0.02, 2.0, 0.5),
                    )
                )
                for name in names
            ]

            async def monkey() -> None:
                while proxy.cuts < MAX_CUTS:
                    await trio.sleep(rng.uniform(0.001, 0.02))
                    proxy.cut_one()

            async with trio.open_nursery() as work:
                work.start_soon(monkey)
                await exchange(
                    clients,
                    lambda i: (i + 1) % CLIENTS,
                    MESSAGES,
                    checker,
                    pause=lambda i, n: 0.01 if n % 100 == 99 else 0.0,
                )
                work.cancel_scope.cancel()
        nursery.cancel_scope.cancel()

    report = checker.report()
    print(f"\nsocket chaos: {report}, cuts={proxy.cuts}, resumes={len(resumes)}")
    assert report.sent == CLIENTS * MESSAGES
    assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0, 0, 0, 0)
    assert proxy.cuts >= 10
    assert resumes
    assert all(r.recovered for r in resumes)
