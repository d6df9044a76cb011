"""Hostile and careless clients, second round: what a black-box probe of the CLI hub found.

A helper that had read only the documents attacked ``genesis-trio serve``
(40 probes). Each test here is one of its findings, reproduced from the
outside and fixed: a message that wedged its JSON receivers for good (now
in tests/test_protocol_rules.py, H19), pongs dropped under a ping flood,
subscriptions without a bound, client error frames written verbatim into
the hub's log, a shutdown that outlived its documented bound, and a second
Origin header that slipped past the check.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import pytest
import trio

from genesis_trio.testing import RunningHub

from .support.processes import start_cli_hub
from .support.rawws import RawLink, Refused


async def test_every_ping_is_answered_under_a_flood(hub: RunningHub) -> None:
    """H9 held only up to 64 queued pongs: 20 000 pings got 10 069 answers.

    The reader now stops reading while control frames wait to be written.
    """
    link = await RawLink.open(hub.info.port)
    await link.hello("pinger")
    count = 5_000
    await link.stream.send_all(b"".join(link.encode({"t": "ping", "id": n}) for n in range(count)))
    answered: set[int] = set()
    while len(answered) < count:
        frame = await link.receive()
        assert frame is not None, f"closed {link.close_code} after {len(answered)} pongs"
        if frame["t"] == "pong":
            answered.add(frame["id"])
    assert answered == set(range(count))
    await link.close()


async def test_subscriptions_are_bounded(hub_factory: Any) -> None:
    """A client could subscribe to a million 200-byte topics (570 MB for 10 sessions).

    Beyond ``max_topics_per_session`` or the hub-wide ``max_subscriptions``
    a subscription is refused with an error frame ``limit``; the rest is done.
    """
    running: RunningHub = await hub_factory(max_topics_per_session=4, max_subscriptions=6)
    port = running.info.port
    first = await RawLink.open(port)
    welcome = await first.hello("first", topics=[f"t{i}" for i in range(6)])
    assert welcome["t"] == "welcome"
    error = await first.next("error")
    assert error["code"] == "limit"
    assert "t4" in error["msg"]
    assert "t5" in error["msg"]
    second = await RawLink.open(port)
    await second.hello("second")
    await second.send({"t": "sub", "topics": ["a", "b", "c"]})
    error = await second.next("error")
    assert (error["code"], error["msg"].rsplit(" ", 1)[-1]) == ("limit", "c")
    table = running.hub.sessions
    assert table.subscriptions == 6
    assert sorted(table.by_id["first"].topics) == ["t0", "t1", "t2", "t3"]
    await first.send({"t": "unsub", "topics": ["t0", "t1"]})
    await second.send({"t": "sub", "topics": ["c"]})
    await second.send({"t": "ping", "id": 7})
    assert await second.next("pong") == {"t": "pong", "id": 7}
    assert sorted(table.by_id["second"].topics) == ["a", "b", "c"]
    assert table.subscriptions == 5
    await first.close()
    await second.close()


async def test_client_error_frames_never_forge_log_lines(
    hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    """Client ``error`` frames were logged verbatim at INFO: 200 MB in 2 s, forged lines.

    They are now logged at DEBUG, shortened and quoted.
    """
    caplog.set_level(logging.DEBUG, logger="genesis_trio")
    link = await RawLink.open(hub.info.port)
    await link.hello("liar")
    forged = "x\n2026-01-01 ERROR genesis_trio: FORGED store corrupted\x1b[31m" + "y" * 100_000
    for _ in range(50):
        await link.send({"t": "error", "code": "c", "msg": forged})
    await link.send({"t": "ping", "id": 1})
    await link.next("pong")
    records = [r for r in caplog.records if "reported error" in r.getMessage()]
    assert len(records) == 50
    for record in records:
        text = record.getMessage()
        assert record.levelno == logging.DEBUG
        assert "\n" not in text
        assert "\x1b" not in text
        assert len(text) < 400
    await link.close()


async def test_a_second_origin_header_is_refused(hub_factory: Any) -> None:
    """With an allowed origin set, ``Origin: allowed`` then ``Origin: evil`` got 101."""
    running: RunningHub = await hub_factory(allowed_origins={"https://app.example"})
    port = running.info.port
    headers = [("Origin", "https://app.example"), ("Origin", "https://evil.example")]
    with pytest.raises(Refused) as refused:
        await RawLink.open(port, headers=headers)
    assert refused.value.status == 403
    assert "more than one Origin" in refused.value.body
    ok = await RawLink.open(port, headers=headers[:1])
    await ok.hello("fine")
    await ok.close()


@pytest.mark.deadline(60)
async def test_shutdown_keeps_its_bound_whatever_the_links_do() -> None:
    """A link that never sent ``hello`` got no 1001 and held SIGTERM for 7 s (23 s at
    ``--close-timeout 10``); a second signal still waited 19 s.

    Now a link in its handshake is closed with 1001 at once, every closing
    link shares one ``close_timeout`` clock, and a second signal drops every
    socket at once.
    """
    async with start_cli_hub("--store", "none", "--close-timeout", "10") as hub:
        waiting = await RawLink.open(hub.port)  # upgraded, no hello
        watcher = await RawLink.open(hub.port)
        await watcher.hello("watcher")
        stuck = await RawLink.open(hub.port, rcvbuf=4096)
        await stuck.hello("stuck")
        await stuck.stream.send_all(stuck.encode({"t": "ping", "id": 1})[:5])  # half a frame
        hub.process.send_signal(signal.SIGTERM)
        assert await waiting.receive() is None
        assert waiting.close_code == 1001
        assert await watcher.receive() is None
        assert watcher.close_code == 1001
        # "stuck" never answers the close: the graceful shutdown waits for it
        # (up to --close-timeout); the second signal must not.
        hub.process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):  # 10 s is what the graceful path would take
            assert await hub.process.wait() == 0
        await stuck.drop()


async def _optimistic_hello(port: int) -> bytes:
    """The upgrade request and a hello frame in one TCP write (RFC 6455 says: wait for 101)."""
    link = await RawLink.open(port)  # a normal link first, for its encoder only
    frame = link.encode({"t": "hello", "v": 1, "id": "eager"})
    await link.close()
    request = (
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request + frame)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer


@pytest.mark.deadline(60)
async def test_provoked_tracebacks_cannot_flood_the_log() -> None:
    """Frames sent before the 101 got HTTP 400 and wrote 3 tracebacks each, at will.

    (Hypercorn's HTTP/1.1 parser takes the early frame for a second request.)
    Tracebacks a client can provoke now have a budget: 10 per minute per logger.
    """
    async with start_cli_hub("--store", "none") as hub:
        for _ in range(40):
            answer = await _optimistic_hello(hub.port)
            assert answer.startswith(b"HTTP/1.1 400")
        assert hub.alive
        logged = hub.log().count("Traceback")
        assert 0 < logged <= 2 * 10 * 2, logged  # two loggers; a contained failure may print two
        link = await RawLink.open(hub.port)
        assert (await link.hello("after"))["t"] == "welcome"
        await link.close()
