"""No client can crash, wedge or bloat the hub (issue 8).

Each test plays a careless or hostile client against the real serving stack
(the CLI hub as a subprocess where the defect lived there, a hub on real
sockets otherwise) and then looks at what the hub process holds: is it
alive, how many links and sessions it counts, its open descriptors, its RSS.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from genesis_trio import (
    CloseCode,
    ClosedError,
    Connected,
    ConnectionClosed,
    ConnectionState,
    LinkEvent,
    TranscendentalWebSocket,
)
from genesis_trio.testing import RunningHub, start_hub, start_memory_hub

from .support.processes import HubProcess, start_cli_hub, wait_until
from .support.rawws import RawLink, Refused

CHURN_CYCLES = 20_000
CHURN_WORKERS = 16


async def settled(hub: HubProcess, *, active: int, fds: int, within: float = 15.0) -> None:
    """Wait until the hub counts ``active`` links and holds at most ``fds`` descriptors."""

    async def check() -> bool:
        health = await hub.health()  # its own socket is closed again before the fd count
        return health["active_connections"] == active and hub.open_fds() <= fds

    await wait_until(check, within)


async def careless_cycle(port: int, worker: int, mode: str) -> None:
    """One short-lived link: hello, then leave in one of the ways strangers do."""
    link = await RawLink.open(port)
    hello = link.encode({"t": "hello", "v": 1, "id": f"churn-{worker}"})
    bye = link.encode({"t": "bye"})
    try:
        if mode == "nowait":  # everything at once, before the welcome
            await link.stream.send_all(hello + bye)
            await link.close()
            return
        await link.stream.send_all(hello)
        await link.next("welcome")
        if mode == "split":  # bye, then the close frame in its own write
            await link.stream.send_all(bye)
            await trio.lowlevel.checkpoint()
            await link.close()
        elif mode == "together":
            await link.stream.send_all(bye)
            await link.close()
        else:  # "drop": no bye, no close frame
            await link.drop()
    except (trio.BrokenResourceError, trio.ClosedResourceError, AssertionError):
        await link.drop()  # the hub closed first: fine, the cycle counts


@pytest.mark.deadline(240)
async def test_connect_close_churn_never_ends_the_hub() -> None:
    """Defect 1: 16 clients churning hello/bye/close/drop killed the process in seconds."""
    async with start_cli_hub("--store", "none") as hub:
        baseline = hub.open_fds()
        counter = itertools.count()
        modes = ("split", "together", "nowait", "drop")

        async def worker(k: int) -> None:
            while (n := next(counter)) < CHURN_CYCLES:
                await careless_cycle(hub.port, k, modes[n % len(modes)])

        async with trio.open_nursery() as nursery:
            for k in range(CHURN_WORKERS):
                nursery.start_soon(worker, k)
        assert hub.alive
        await settled(hub, active=0, fds=baseline + 2)
        health = await hub.health()
        assert health["sessions"] <= CHURN_WORKERS  # "drop" leaves one per id, nothing more
        assert "Traceback" not in hub.log()


async def test_leaving_async_with_never_raises() -> None:
    """Defect 5: 141 of 300 connect/close cycles raised from ``__aexit__``."""
    failures: list[BaseException] = []
    counter = itertools.count()
    async with start_cli_hub("--store", "none") as hub:

        async def worker(k: int) -> None:
            while next(counter) < 300:
                try:
                    async with TranscendentalWebSocket(hub.url, f"w{k}") as ws:
                        await ws.send(f"w{k}", "ping", k)
                        assert (await ws.receive()).data == k
                except BaseException as exc:
                    failures.append(exc)

        async with trio.open_nursery() as nursery:
            for k in range(8):
                nursery.start_soon(worker, k)
    assert failures == []


async def test_a_cancelled_async_with_flushes_and_ends_its_session() -> None:
    """Leaving ``async with`` because the block was cancelled (a timeout around it, the
    usual Trio idiom) still flushes what was sent and says ``bye``: every message
    arrives, and the hub keeps no session waiting for a resume that will not come."""
    n = 300
    async with (
        start_cli_hub("--store", "none") as hub,
        TranscendentalWebSocket(hub.url, "sink") as sink,
    ):
        for k in range(3):
            with trio.CancelScope() as scope:
                async with TranscendentalWebSocket(hub.url, f"gone{k}") as ws:
                    for i in range(n):
                        await ws.send("sink", "n", i)
                    scope.cancel()
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            got = [(await sink.receive()) for _ in range(n)]
            assert [(m.sender, m.data) for m in got] == [(f"gone{k}", i) for i in range(n)]

        async def only_the_sink() -> bool:
            return (await hub.health())["sessions"] == 1

        await wait_until(only_the_sink, 10)


async def test_a_deadline_while_async_with_starts_never_hangs(hub: RunningHub) -> None:
    """A cancellation that lands while ``async with`` starts (the link up, the block not
    begun) ends it like any other: the block never begins and nothing is left running.
    (Once begun, the client's run is shielded until aclose: it must not be before.)"""
    scope = trio.CancelScope()

    def cancel_on_connect(event: LinkEvent) -> None:
        if isinstance(event, Connected):
            scope.cancel()

    early = TranscendentalWebSocket(hub.url, "early", on_link_event=cancel_on_connect)
    with scope:
        async with early:
            pytest.fail("the block began although its scope was cancelled")
    assert scope.cancelled_caught
    assert early.state is ConnectionState.DISCONNECTED  # its link closed; it may try again

    start = trio.current_time()
    async with TranscendentalWebSocket(hub.url, "timer"):
        pass
    took = trio.current_time() - start
    rng = random.Random(7)
    for i in range(150):  # deadlines spread over a whole connect and close
        with trio.move_on_after(rng.uniform(0, took)):
            async with TranscendentalWebSocket(hub.url, f"d{i}"):
                await trio.sleep_forever()
    await trio.testing.wait_all_tasks_blocked()
    assert hub.hub.get_stats()["active_connections"] == 0


async def test_one_client_cannot_fill_the_hub_through_sessions_it_left() -> None:
    """A client opens sessions, leaves them, and fills each with messages of its own
    (each session's own bound, 16 MiB, is far away), made of empty lists that take ~25
    times their encoded size once decoded: the hub keeps the sum under
    ``--max-retained-bytes`` by shedding the longest-disconnected, keeps what waits
    encoded, and a bystander's conversation is untouched."""
    budget = 8 << 20
    pad = [[] for _ in range(60_000)]  # 180 KB encoded, ~25 times that decoded
    ids = [f"left{i}" for i in range(40)]
    async with start_cli_hub("--store", "none", "--max-retained-bytes", str(budget)) as hub:
        rss_before = hub.rss_kib()
        for cid in ids:
            left = TranscendentalWebSocket(hub.url, cid)
            await left.connect()
            await left.aclose(end_session=False)
        async with (
            TranscendentalWebSocket(hub.url, "filler") as filler,
            TranscendentalWebSocket(hub.url, "bystander") as bystander,
        ):
            for _ in range(10):  # 72 MB in all, 1.8 MB per left session
                for cid in ids:
                    await filler.send(cid, "fill", pad)
                await bystander.send("bystander", "n", 1)
                assert (await bystander.receive()).data == 1
            await filler.flush()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub.port}") as http:
            stats = (await http.get("/api/stats")).json()
        assert stats["retained_bytes"] <= budget
        assert stats["messages_evicted"] >= 300  # of 400 messages, 8 MB at most kept
        assert stats["sessions"] == len(ids)  # the filler and the bystander said bye
        assert hub.rss_kib() - rss_before < 60 * 1024  # ~25 MB measured; ~240 MB kept decoded
        assert "Traceback" not in hub.log()


async def _raw_http(port: int, request: bytes) -> tuple[bytes, dict[str, Any]]:
    """Send ``request`` as is; the status line and the JSON body of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    return head.split(b"\r\n", 1)[0], json.loads(body)


async def test_requests_that_are_not_http_get_a_problem_document() -> None:
    """What the HTTP server refuses before any application runs (not HTTP/1.1, a head
    too large) is explained like every other error, and harms no one."""
    async with start_cli_hub("--store", "none") as hub:
        fds = hub.open_fds()
        status, problem = await _raw_http(hub.port, b"GARBAGE\r\n\r\n")
        assert status == b"HTTP/1.1 400 Bad Request"
        assert problem == {
            "title": "Bad Request",
            "status": 400,
            "detail": "the request is not valid HTTP/1.1",
        }
        big = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 70_000
        status, problem = await _raw_http(hub.port, big + b"\r\n\r\n")
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert problem["status"] == 431
        assert "exceed 16384 bytes" in problem["detail"]
        async with TranscendentalWebSocket(hub.url, "after") as ws:
            await ws.send("after", "ping", 1)
            assert (await ws.receive()).data == 1
        await settled(hub, active=0, fds=fds)
        assert "Traceback" not in hub.log()


async def test_async_with_raises_the_exception_itself_not_a_group() -> None:
    """A fatal close (4001) surfaces as ConnectionClosed; a body's own error as itself."""

    async def replaced(url: str) -> None:
        async with TranscendentalWebSocket(url, "twin") as first:
            await first.send("twin", "x")
            async with TranscendentalWebSocket(url, "twin"):
                await trio.sleep_forever()  # cancelled when `first` is replaced

    async def failing_body(url: str) -> None:
        async with TranscendentalWebSocket(url, "plain"):
            raise KeyError("mine")

    async with start_cli_hub("--store", "none") as hub:
        with pytest.raises(ConnectionClosed) as caught:
            await replaced(hub.url)
        assert caught.value.code == CloseCode.REPLACED
        with pytest.raises(KeyError):
            await failing_body(hub.url)


async def keep_pinging(link: RawLink) -> None:
    """Ping every 200 ms (alive, by the heartbeat rules) without ever reading; stop when gone."""
    try:
        for n in itertools.count():
            await link.send({"t": "ping", "id": n})
            await trio.sleep(0.2)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def blast(url: str, target: str, count: int, size: int) -> None:
    """Send ``count`` messages of ``size`` bytes to ``target`` (returns once buffered)."""
    async with TranscendentalWebSocket(url, "blaster", max_pending=count) as ws:
        for i in range(count):
            await ws.send(target, "blob", f"{i:08d}" + "x" * size)
        await ws.flush()


@pytest.mark.parametrize("pings", [False, True], ids=["silent", "pinging"])
@pytest.mark.deadline(60)
async def test_a_client_that_stops_reading_is_dropped(pings: bool) -> None:
    """Defect 2: a client that never reads held its link (and the hub) indefinitely.

    Silent, it is dead by the heartbeat (4003); pinging, it is alive but its
    link's writer stays blocked (4004). Either way the socket is dropped
    within ``close_timeout`` although Hypercorn shields the blocked send.
    """
    args = ["--store", "none", "--heartbeat-interval", "1", "--slow-consumer-timeout", "1"]
    async with start_cli_hub(*args, "--close-timeout", "1") as hub:
        baseline = hub.open_fds()
        sink = await RawLink.open(hub.port, rcvbuf=4096)
        await sink.hello("sink")
        async with trio.open_nursery() as nursery:
            if pings:
                nursery.start_soon(keep_pinging, sink)
            await blast(hub.url, "sink", 2000, 8192)  # far more than socket buffers hold
            await settled(hub, active=0, fds=baseline + 1)  # the sink's socket is gone
            nursery.cancel_scope.cancel()
        await sink.drop()
        assert hub.alive


@pytest.mark.deadline(60)
async def test_shutdown_finishes_whatever_the_peers_do() -> None:
    """Defect 2: SIGTERM was ignored while a send to a non-reading client was blocked."""
    args = ["--store", "none", "--slow-consumer-timeout", "60", "--close-timeout", "1"]
    async with start_cli_hub(*args) as hub:
        sink = await RawLink.open(hub.port, rcvbuf=4096)
        await sink.hello("sink")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_pinging, sink)
            await blast(hub.url, "sink", 2000, 8192)
            hub.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):  # close_timeout + Hypercorn's graceful time + margin
                assert await hub.process.wait() == 0
            nursery.cancel_scope.cancel()
        await sink.drop()


async def test_closed_deflate_links_cost_no_memory() -> None:
    """Defect 4: 1 000 closed deflate links grew the GC-tuned hub by ~100 MiB."""

    async def deflate_cycle(n: int) -> None:
        link = await RawLink.open(hub.port, deflate=True)
        cid = f"d{n % 50}"  # ids reused batch after batch: sessions are replaced
        await link.hello(cid)
        await link.send({"t": "msg", "seq": 1, "m": {"type": "t", "to": cid, "data": "y" * 2000}})
        frame = await link.delivery()  # the hub has inflated and deflated on this link
        last = frame["seq"] + (len(frame["m"]) if frame["t"] == "batch" else 1) - 1
        await link.send({"t": "ack", "seq": last})
        await link.drop()

    async def cycles(start: int, count: int) -> None:
        for batch in range(start, start + count, 50):
            async with trio.open_nursery() as nursery:
                for n in range(batch, batch + 50):
                    nursery.start_soon(deflate_cycle, n)

    async with start_cli_hub("--store", "none") as hub:  # default GC tuning: on
        await cycles(0, 200)
        before = hub.rss_kib()
        await cycles(200, 1000)
        grown = hub.rss_kib() - before
        assert grown < 20 * 1024, f"RSS grew by {grown} KiB over 1000 closed deflate links"


async def test_unknown_environment_variables_are_refused() -> None:
    """Defect 7: a misspelt GENESIS_TRIO_* variable was silently ignored."""
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "genesis_trio", "serve", "--port", "0"],
            env={"GENESIS_TRIO_ALLOWED_ORIGINS": "http://a.example", "PATH": "/usr/bin:/bin"},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "GENESIS_TRIO_ALLOWED_ORIGINS" in stderr
    assert "did you mean GENESIS_TRIO_ALLOWED_ORIGIN?" in stderr


async def test_allowed_origin_from_the_environment() -> None:
    """Defect 7: GENESIS_TRIO_ALLOWED_ORIGIN (the name the help implies) is honoured."""
    env = {"GENESIS_TRIO_ALLOWED_ORIGIN": "http://good.example,http://also.example"}
    async with start_cli_hub("--store", "none", env=env) as hub:
        for origin in ("http://good.example", "http://also.example"):
            link = await RawLink.open(hub.port, headers=[("Origin", origin)])
            await link.close()
        with pytest.raises(Exception, match="HTTP 403") as refused:
            await RawLink.open(hub.port, headers=[("Origin", "http://evil.example")])
        assert "evil.example" in str(refused.value)


def test_help_shows_no_empty_default() -> None:
    """Defect 7: ``--node-id`` printed "(default: random) (default: )"."""
    out = subprocess.run(
        [sys.executable, "-m", "genesis_trio", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "(default: )" not in out
    assert "--max-sessions" in out
    assert "--max-connections-per-address" in out


async def backpressured_sender(open_link: Callable[[], Awaitable[RawLink]], tick: float) -> None:
    """A sends 12 messages at once to B, whose buffer holds 5 and who acks one per 6 ticks.

    While A's messages wait for room at B, A's own frames must be handled:
    every ping answered within 2 ticks, its messages acknowledged as they
    are routed, its link never closed; B gets all 12, in order, once.
    """
    a, b = await open_link(), await open_link()
    await b.hello("b")
    await a.hello("a")
    batch = [{"type": "n", "to": "b", "data": i} for i in range(1, 13)]
    await a.send({"t": "batch", "seq": 1, "m": batch})
    received: list[int] = []
    pong_delays: list[float] = []
    a_acked = 0

    async def consumer() -> None:
        acked = 0
        async with trio.open_nursery() as nursery:

            async def reader() -> None:  # answers the hub's pings at once: B is alive
                while True:
                    frame = await b.receive()
                    assert frame is not None, f"B's link closed with {b.close_code}"
                    if frame["t"] == "ping":
                        await b.send({"t": "pong", "id": frame["id"]})
                    elif frame["t"] in ("msg", "batch"):
                        bodies = frame["m"] if frame["t"] == "batch" else [frame["m"]]
                        for offset, body in enumerate(bodies):
                            if frame["seq"] + offset > len(received):
                                received.append(body["data"])

            nursery.start_soon(reader)
            while acked < 12:  # one ack per 6 ticks: the slow consumer
                await trio.sleep(6 * tick)
                if acked < len(received):
                    acked += 1
                    await b.send({"t": "ack", "seq": acked})
            nursery.cancel_scope.cancel()

    async def sender(done: trio.Event) -> None:
        nonlocal a_acked
        sent_at: dict[int, float] = {}
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                nonlocal a_acked
                while True:
                    frame = await a.receive()
                    assert frame is not None, f"A's link closed with {a.close_code}"
                    if frame["t"] == "pong":
                        pong_delays.append(trio.current_time() - sent_at[frame["id"]])
                    elif frame["t"] == "ack":
                        a_acked = max(a_acked, frame["seq"])
                    elif frame["t"] == "ping":
                        await a.send({"t": "pong", "id": frame["id"]})

            nursery.start_soon(reader)
            for n in itertools.count():
                if done.is_set() and a_acked == 12:
                    break
                sent_at[n] = trio.current_time()
                await a.send({"t": "ping", "id": n})
                await trio.sleep(tick)
            nursery.cancel_scope.cancel()

    done = trio.Event()
    with trio.fail_after(200 * tick):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, done)
            await consumer()
            done.set()
    assert received == list(range(1, 13))
    assert a_acked == 12
    assert len(pong_delays) >= 12 * 6 * tick / tick - 12  # pings kept flowing all along
    assert max(pong_delays) <= 2 * tick, f"a pong waited {max(pong_delays)} s behind routing"
    await a.drop()
    await b.drop()


async def test_a_backpressured_sender_keeps_its_link_in_memory(autojump_clock: object) -> None:
    """Defect 3, on the in-memory kit (virtual time: ticks of 0.5 s, heartbeat 1 s)."""
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(
            nursery, retention_messages=5, heartbeat_interval=1.0, slow_consumer_timeout=10.0
        )

        async def open_link() -> RawLink:
            return await RawLink.upgrade(await memory.open_stream(), "memory-hub")

        await backpressured_sender(open_link, tick=0.5)
        stats = memory.hub.statistics()
        assert stats.heartbeat_timeouts == 0
        assert stats.slow_consumers_closed == 0
        nursery.cancel_scope.cancel()


@pytest.mark.deadline(60)
async def test_a_backpressured_sender_keeps_its_link_over_sockets() -> None:
    """Defect 3 (and H9) against the CLI hub: then no descriptor of A or B is left behind."""
    args = ["--store", "none", "--retention-messages", "5", "--heartbeat-interval", "1"]
    async with start_cli_hub(*args) as hub:
        baseline = hub.open_fds()
        await backpressured_sender(lambda: RawLink.open(hub.port), tick=0.1)
        await settled(hub, active=0, fds=baseline)
        assert hub.alive


def _live(kind: type) -> int:
    return sum(type(o) is kind for o in gc.get_objects())


async def test_a_finished_link_and_its_session_are_freed_without_the_cycle_collector() -> None:
    """The CLI hub collects cycles rarely (``tune_gc``), so a link that ends must
    free its session and the messages it retained by reference counting alone.
    A closure the link protocol kept once pointed back at the link: every slow
    reader's 3 MiB buffer stayed in RSS until a full collection (the soak's
    RSS ended at 227 MiB instead of ~70)."""
    from genesis_trio._hub.link import HubLink
    from genesis_trio._hub.sessions import HubSession

    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            running = await start_hub(nursery)
            before = _live(HubLink), _live(HubSession)
            sink = await RawLink.open(running.port)
            await sink.hello("sink")
            pusher = await RawLink.open(running.port)
            await pusher.hello("pusher")
            for seq in range(1, 4):
                await pusher.send({"t": "msg", "seq": seq, "m": {"type": "x", "to": "sink"}})
            for link in (sink, pusher):
                await link.send({"t": "bye"})
                await link.close()

            async def gone() -> bool:
                stats = running.hub.statistics()
                return stats.active_connections == 0 and stats.sessions == 0

            await wait_until(gone, 10)
            await trio.testing.wait_all_tasks_blocked()
            assert (_live(HubLink), _live(HubSession)) == before
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_a_low_descriptor_limit_lowers_max_connections_instead_of_failing_accepts() -> None:
    """With ``ulimit -n 160`` and the default max_connections (10 000), links past
    the limit failed in ``accept`` (EMFILE): the 145th client waited in the
    backlog with no answer. The hub now lowers max_connections to what the limit affords
    (160 - 64 reserved = 96) and refuses the rest with the documented 503."""
    async with start_cli_hub("--store", "none", descriptors=160) as hub:
        assert "affords 96 links" in hub.log()
        links: list[RawLink] = []
        refused: list[int] = []
        hung = 0
        try:
            for _ in range(200):  # more than the descriptors: the old hub hung at ~145
                with trio.move_on_after(5) as waited:
                    try:
                        link = await RawLink.open(hub.port)
                    except Refused as refusal:
                        refused.append(refusal.status)
                    else:
                        links.append(link)
                        await link.hello(None)
                if waited.cancelled_caught:
                    hung += 1
                    break
            assert (len(links), refused, hung) == (96, [503] * 104, 0)
            assert (await hub.health())["active_connections"] == 96  # and it still answers
        finally:
            for link in links:
                await link.drop()
        await settled(hub, active=0, fds=140)
        assert hub.alive
        assert "Too many open files" not in hub.log()


async def test_a_closed_client_refuses_subscriptions_and_a_cancelled_run_resumes(
    nursery: trio.Nursery,
) -> None:
    """``subscribe``/``unsubscribe`` on a closed client raise ClosedError (they waited for
    ever); a ``run()`` that was cancelled can be run again and resumes its session."""
    hub = await start_memory_hub(nursery)
    async with hub.client("done") as done:
        await done.subscribe("t")
    never = hub.client("never")
    await never.aclose()
    for closed in (done, never):
        with pytest.raises(ClosedError):
            await closed.subscribe("t")
        with pytest.raises(ClosedError):
            await closed.unsubscribe("t")

    events: list[LinkEvent] = []
    ws = hub.client("again", on_link_event=events.append)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(ws.run)
            await ws.send("again", "n", 1)
            await ws.flush()
            scope.cancel()
    assert ws.state is ConnectionState.DISCONNECTED
    async with trio.open_nursery() as inner:
        await inner.start(ws.run)
        assert (await ws.receive()).data == 1
        await ws.aclose()
    connects = [e for e in events if isinstance(e, Connected)]
    assert [(e.first, e.recovered) for e in connects] == [(True, False), (False, True)]
