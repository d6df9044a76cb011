"""Redis faults under a cluster of CLI hubs: down for 5 s, flushed, cut off from one node.

Acknowledged messages are never lost; where Redis lost history (a flush)
every client is told (``recovered: false``, a new session), never a silent
gap; a node cut off from Redis past its lease stops once it sees Redis
again, and its clients resume exactly on another node.
"""

from __future__ import annotations

import contextlib
import signal

import pytest
import trio

from genesis_trio import Disconnected, LinkEvent
from genesis_trio.testing import DeliveryChecker

from .support.cluster import TcpProxy, start_node
from .support.redis import redis_server
from .support.workload import exchange
from .test_cluster import Links, clean, client

pytestmark = [pytest.mark.slow]


class Closes:
    """Close codes the clients saw."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, event: LinkEvent) -> None:
        if isinstance(event, Disconnected):
            self.codes.append(event.code)


@pytest.mark.deadline(90)
async def test_redis_down_for_five_seconds() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        flags = ("--store-outage-timeout", "1")
        nodes = [
            await stack.enter_async_context(start_node(redis.url, f"n{i}", *flags, lease=10.0))
            for i in range(2)
        ]
        urls = [node.url for node in nodes]
        links = Links()
        names = [f"p{i}" for i in range(4)]
        clients = [
            await stack.enter_async_context(client(urls[i % 2 :] + urls[: i % 2], name, links))
            for i, name in enumerate(names)
        ]
        checker = DeliveryChecker()
        delivered = 0
        outage = trio.Event()

        def count() -> None:
            nonlocal delivered
            delivered += 1
            if delivered == 800:
                outage.set()

        def paced(i: int, n: int) -> float:
            # Past the first 150, 10 ms apart: the traffic outlasts the outage
            # (unpaced, it could all be acknowledged before Redis went down).
            return 0.01 if n >= 150 else 0.0

        async def take_redis_down() -> None:
            await outage.wait()
            await redis.stop(signal.SIGKILL)
            await trio.sleep(5)  # the fault's length, not a wait for work
            await redis.start()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take_redis_down)
            with trio.fail_after(60):
                await exchange(
                    clients, lambda i: (i + 1) % 4, 1000, checker, pause=paced, delivered=count
                )
        report = checker.report()
        assert report.delivered == 4000
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4
        resumes = [e for _, e in links.events if not e.first]
        assert resumes, "the outage closed no link"
        assert all(e.recovered for e in resumes), resumes
        for node in nodes:
            assert node.alive
            assert "closing links with 4006" in node.log()
            clean(node)


@pytest.mark.deadline(90)
async def test_redis_flushed_every_client_is_told() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        ports = []
        nodes = []
        for i in range(2):
            node = await stack.enter_async_context(start_node(redis.url, f"n{i}", lease=1.0))
            nodes.append(node)
            ports.append(int(node.url.rsplit(":", 1)[1].split("/")[0]))
        links = Links()
        a = await stack.enter_async_context(client([nodes[0].url], "a", links))
        b = await stack.enter_async_context(client([nodes[1].url], "b", links))
        closes = Closes()
        a.add_link_listener(closes)
        b.add_link_listener(closes)
        for n in range(20):
            await a.send("b", "n", n)
        assert [(await b.receive()).data for _ in range(20)] == list(range(20))

        import coredis

        async with coredis.Redis.from_url(redis.url) as r:
            await r.flushall()
        with trio.fail_after(20):  # each node sees its lease gone and stops: its memory is stale
            statuses = [await node.process.wait() for node in nodes]
        assert statuses == [3, 3], [node.log()[-1500:] for node in nodes]
        for node in nodes:
            assert "no longer holds" in node.log()
        assert closes.codes == [4006, 4006]  # "this node lost its sessions": resume elsewhere
        for i in range(2):  # a supervisor restarts them
            await stack.enter_async_context(
                start_node(redis.url, f"n{i}", port=ports[i], lease=1.0)
            )
        with trio.fail_after(30):
            await links.wait("a", 2)
            await links.wait("b", 2)
        again = [e for _, e in links.events if not e.first]
        assert again
        assert not any(e.recovered for e in again), again  # told: the history is gone
        for n in range(20, 30):
            await a.send("b", "n", n)
        assert [(await b.receive()).data for _ in range(10)] == list(range(20, 30))


@pytest.mark.deadline(90)
async def test_node_cut_off_from_redis_clients_move_and_it_stops() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        proxy = TcpProxy(redis.port)
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(proxy.run)
        flags = ("--store-outage-timeout", "0.5")
        n0 = await stack.enter_async_context(start_node(proxy.url, "n0", *flags, lease=2.0))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", *flags, lease=2.0))
        links = Links()
        a = await stack.enter_async_context(client([n1.url], "a", links))
        closes = Closes()
        b = await stack.enter_async_context(client([n0.url, n1.url], "b", links))
        b.add_link_listener(closes)
        checker = DeliveryChecker()
        delivered = 0
        cut = trio.Event()

        def count() -> None:
            nonlocal delivered
            delivered += 1
            if delivered == 1000:
                proxy.cut()
                cut.set()

        with trio.fail_after(60):
            await exchange([a, b], lambda i: i ^ 1, 3000, checker, delivered=count)
        report = checker.report()
        assert cut.is_set()
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4
        assert 4006 in closes.codes
        second = [e for name, e in links.events if name == "b"][1:]
        assert second
        assert all(e.recovered for e in second)
        proxy.heal()  # n0 sees Redis again, and that its lease lapsed: it stops
        with trio.fail_after(20):
            assert await n0.process.wait() == 3
        assert "no longer holds" in n0.log()
        clean(n1)
        nursery.cancel_scope.cancel()
