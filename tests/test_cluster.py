"""Several CLI hubs as one cluster through Redis (real processes, real sockets).

Messages and publishes cross nodes exactly once; a client resumes on
another node after its node is SIGKILLed, after it is black-holed (the
node is asked to let go), and a node frozen past its lease stops rather
than write to a session another node took (fencing).
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import Callable, Sequence

import httpx
import pytest
import trio

from genesis_trio import Connected, LinkEvent, Message, TranscendentalWebSocket, backoff
from genesis_trio.testing import DeliveryChecker

from .support.cluster import Switchboard, port_of, ring_through_a_kill, start_node
from .support.processes import HubProcess
from .support.redis import redis_server
from .support.workload import exchange

pytestmark = [pytest.mark.slow]


class Links:
    """Every ``Connected`` event of the clients, by name, and a way to wait for more."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Connected]] = []
        self._changed = trio.Event()

    def listener(self, name: str) -> Callable[[LinkEvent], None]:
        def on(event: LinkEvent) -> None:
            if isinstance(event, Connected):
                self.events.append((name, event))
                self._changed.set()
                self._changed = trio.Event()

        return on

    def count(self, name: str) -> int:
        return sum(1 for who, _ in self.events if who == name)

    async def wait(self, name: str, count: int) -> None:
        while self.count(name) < count:
            await self._changed.wait()


def client(
    urls: Sequence[str],
    name: str,
    links: Links,
    board: Switchboard | None = None,
    **options: object,
) -> TranscendentalWebSocket:
    return TranscendentalWebSocket(
        list(urls),
        name,
        on_link_event=links.listener(name),
        backoff_factory=functools.partial(backoff, 0.05, 2.0, 0.5),
        breaker_threshold=1000,
        stream_factory=board,
        **options,  # type: ignore[arg-type]
    )


def clean(node: HubProcess) -> None:
    assert "Traceback" not in node.log(), node.log()[-3000:]


@pytest.mark.deadline(60)
async def test_direct_messages_and_publishes_cross_nodes() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0"))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1"))
        links = Links()
        a = await stack.enter_async_context(client([n0.url], "a", links))
        b = await stack.enter_async_context(client([n1.url], "b", links))
        c = await stack.enter_async_context(client([n0.url], "c", links, topics=["t"]))
        d = await stack.enter_async_context(client([n1.url], "d", links, topics=["t"]))
        checker = DeliveryChecker()
        await exchange([a, b], lambda i: i ^ 1, 500, checker)
        report = checker.report()
        assert (report.sent, report.delivered) == (1000, 1000)
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4

        for n in range(50):  # one subscriber on each node: each gets every one, in order
            await a.publish("t", "tick", n)
        for sub in (c, d):
            got = [(await sub.receive()).data for _ in range(50)]
            assert got == list(range(50))

        await a.send("ghost", "x", 1)  # no session anywhere: answered after the commit
        with trio.fail_after(10):
            while a.last_error is None:  # noqa: ASYNC110 - the client has no event for it
                await trio.sleep(0.01)
        assert a.last_error.code == "unknown_target"

        api = n0.url.replace("ws://", "http://").removesuffix("/ws")
        async with httpx.AsyncClient(base_url=api) as http:  # the hub's own sends, across
            sent = await http.post("/api/components/b/messages", json={"type": "op", "data": 7})
            assert (sent.status_code, sent.json()) == (202, {"seq": 0})  # b's node knows it
            ghost = await http.post("/api/components/ghost/messages", json={"type": "op"})
            assert ghost.status_code == 404
            assert "in the cluster" in ghost.json()["detail"]
            message = await b.receive()
            assert (message.sender, message.type, message.data) == ("$hub", "op", 7)

            @b.on("add")
            async def add(message: Message) -> int:
                return int(sum(message.data))

            @b.on("boom")
            async def boom(message: Message) -> None:
                raise RuntimeError("no")

            for _ in range(3):  # n0's request, answered on n1: the reply comes back to n0
                reply = await http.post(
                    "/api/components/b/requests", json={"type": "add", "data": [1, 2]}
                )
                assert (reply.status_code, reply.json()) == (200, {"data": 3})
            failed = await http.post("/api/components/b/requests", json={"type": "boom"})
            assert (failed.status_code, failed.json()["code"]) == (502, "handler_error")
        for ws in (a, b, c, d):
            assert ws.statistics().resumes_failed == 0
        assert min(links.count(name) for name in "abcd") == 1
        clean(n0)
        clean(n1)


@pytest.mark.deadline(90)
async def test_resume_on_another_node_after_sigkill() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        nodes = [await stack.enter_async_context(start_node(redis.url, f"n{i}")) for i in range(3)]
        urls = [node.url for node in nodes]
        board = Switchboard()
        links = Links()
        names = [f"p{i}" for i in range(6)]
        clients = []
        for i, name in enumerate(names):  # p0, p3 on n0; p1, p4 on n1; p2, p5 on n2
            order = urls[i % 3 :] + urls[: i % 3]
            clients.append(await stack.enter_async_context(client(order, name, links, board)))
        await ring_through_a_kill(clients, nodes[0], after=500, messages=1000)
        resumes = [(name, e) for name, e in links.events if not e.first]
        moved = {name for name, _ in resumes}
        assert {"p0", "p3"} <= moved  # the clients of the killed node came back elsewhere
        assert all(e.recovered for _, e in resumes), resumes
        dead = port_of(urls[0])
        assert board.opened.count(dead) == 2  # nobody reached the dead node again
        for node in nodes[1:]:
            clean(node)


@pytest.mark.deadline(90)
async def test_resume_on_another_node_while_the_old_one_holds_the_session() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=30.0))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", lease=30.0))
        board = Switchboard()
        links = Links()
        a = await stack.enter_async_context(client([n1.url], "a", links, board))
        b = await stack.enter_async_context(
            client([n0.url, n1.url], "b", links, board, heartbeat_interval=0.3, heartbeat_floor=0.3)
        )
        checker = DeliveryChecker()
        moved = trio.Event()

        async def partition() -> None:
            await links.wait("b", 1)
            await trio.sleep(0.3)  # traffic under way
            board.silence(port_of(n0.url))  # n0 still holds b's link: it must let go
            await links.wait("b", 2)
            moved.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partition)
            with trio.fail_after(60):
                await exchange([a, b], lambda i: i ^ 1, 3000, checker, pause=lambda i, n: 0.0005)
            await moved.wait()
        report = checker.report()
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4
        second = [e for name, e in links.events if name == "b"][1]
        assert second.recovered  # resumed exactly on n1 (n0's lease has 30 s to run)
        stats = b.statistics()
        assert stats.resumes_recovered == 1
        clean(n0)
        clean(n1)


@pytest.mark.deadline(90)
async def test_a_node_frozen_past_its_lease_stops_instead_of_writing() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=1.0))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", lease=1.0))
        links = Links()
        a = await stack.enter_async_context(client([n1.url], "a", links))
        b = await stack.enter_async_context(
            client([n0.url, n1.url], "b", links, heartbeat_interval=0.3, heartbeat_floor=0.3)
        )
        checker = DeliveryChecker()

        async def freeze() -> None:
            await links.wait("b", 1)
            await trio.sleep(0.3)  # traffic under way
            n0.process.send_signal(signal.SIGSTOP)  # silent past its lease: n1 takes b over
            await links.wait("b", 2)
            n0.process.send_signal(signal.SIGCONT)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(freeze)
            with trio.fail_after(60):
                await exchange([a, b], lambda i: i ^ 1, 3000, checker, pause=lambda i, n: 0.0005)
        with trio.fail_after(20):
            status = await n0.process.wait()
        report = checker.report()
        assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4
        assert status == 3, n0.log()[-2000:]
        assert "no longer holds" in n0.log()
        assert [e.recovered for name, e in links.events if name == "b"] == [False, True]
        clean(n1)


@pytest.mark.deadline(60)
async def test_a_dead_nodes_sessions_are_adopted_and_wait_for_their_clients() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=1.0))
        n1 = await stack.enter_async_context(start_node(redis.url, "n1", lease=1.0))
        board = Switchboard()
        board.silence(port_of(n1.url))  # b reaches n0 only, for now
        links = Links()
        a = await stack.enter_async_context(client([n1.url], "a", links))
        b = await stack.enter_async_context(client([n0.url, n1.url], "b", links, board))
        for n in range(5):
            await a.send("b", "n", n)
        assert [(await b.receive()).data for _ in range(5)] == list(range(5))
        n0.process.send_signal(signal.SIGKILL)
        await n0.process.wait()
        for n in range(5, 15):  # into b's inbox: nobody holds b
            await a.send("b", "n", n)
        api = n1.url.replace("ws://", "http://").removesuffix("/ws")
        async with httpx.AsyncClient(base_url=api) as http:

            async def adopted() -> int:
                stats = (await http.get("/api/cluster")).json()["nodes"]["n1"]
                return int(stats["cluster"]["adopted"])

            with trio.fail_after(20):  # n1 adopts b once n0's lease lapsed (statistics: 1 s)
                while not await adopted():  # noqa: ASYNC110 - another process's state
                    await trio.sleep(0.1)
            row = (await http.get("/api/components/b")).json()
        assert row["connected"] is False
        assert row["node"] == "n1"
        board.restore(port_of(n1.url))
        assert [(await b.receive()).data for _ in range(10)] == list(range(5, 15))
        resumed = [e for name, e in links.events if name == "b"][1:]
        assert [e.recovered for e in resumed] == [True]
        clean(n1)


@pytest.mark.deadline(60)
async def test_adoption_stops_at_max_sessions() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_server())
        n0 = await stack.enter_async_context(start_node(redis.url, "n0", lease=1.0))
        n1 = await stack.enter_async_context(
            start_node(redis.url, "n1", "--max-sessions", "2", lease=1.0)
        )
        links = Links()
        for name in ("a", "b", "c"):  # three sessions on n0, left there by their clients
            async with client([n0.url], name, links) as ws:
                await ws.send(name, "hi", 0)
                assert (await ws.receive()).data == 0
                await ws.aclose(end_session=False)
        x = await stack.enter_async_context(client([n1.url], "x", links))
        n0.process.send_signal(signal.SIGKILL)
        await n0.process.wait()
        api = n1.url.replace("ws://", "http://").removesuffix("/ws")
        async with httpx.AsyncClient(base_url=api) as http:

            async def adopted() -> int:
                stats = (await http.get("/api/cluster")).json()["nodes"]["n1"]
                return int(stats["cluster"]["adopted"])

            with trio.fail_after(20):  # one pass adopts what fits: one, next to x
                while not (count := await adopted()):  # noqa: ASYNC110 - another process
                    await trio.sleep(0.1)
            assert count == 1
            assert len((await http.get("/api/components")).json()["items"]) == 2
        await x.send("x", "still", 1)
        assert (await x.receive()).data == 1
        clean(n1)
