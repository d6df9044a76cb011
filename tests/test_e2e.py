"""End to end over real loopback: Hypercorn in the test's nursery, real clients."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from genesis_trio import (
    CloseCode,
    Connected,
    ConnectionClosed,
    Disconnected,
    LinkEvent,
    Message,
    RemoteError,
    RequestTimeout,
    TranscendentalWebSocket,
    UnknownComponent,
)
from genesis_trio._hub.auth import StaticTokens
from genesis_trio.testing import RunningHub, start_memory_hub

from .support.processes import wait_until
from .support.rawws import RawLink


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_two_clients_exchange_1000_messages_in_order(hub: RunningHub, codec: str) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "alice", codec=codec) as alice,
        TranscendentalWebSocket(hub.url, "bob", codec=codec) as bob,
    ):
        for i in range(1000):
            await alice.send("bob", "n", i)
            await bob.send("alice", "n", -i)
        got_bob = [(await bob.receive()).data for _ in range(1000)]
        got_alice = [(await alice.receive()).data for _ in range(1000)]
        assert got_bob == list(range(1000))
        assert got_alice == [-i for i in range(1000)]
        await alice.flush()
        stats = hub.hub.get_stats()
        assert stats["messages_in"] == 2000
        assert stats["messages_out"] == 2000
        assert stats["active_connections"] == 2
        assert stats["collapse_factor"] >= 1.0


async def test_received_message_carries_sender_and_addressing(hub: RunningHub) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "a") as a,
        TranscendentalWebSocket(hub.url, "b") as b,
    ):
        await a.send("b", "greeting", {"text": "hola"})
        msg = await b.receive()
        assert msg.type == "greeting"
        assert msg.data == {"text": "hola"}
        assert msg.sender == "a"
        assert msg.to == "b"
        assert msg.seq == 1


async def test_mixed_codecs_interoperate(hub: RunningHub) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "j", codec="json") as j,
        TranscendentalWebSocket(hub.url, "m", codec="msgpack") as m,
    ):
        await j.send("m", "x", {"k": [1, 2.5, "s", None, True]})
        await m.send("j", "y", {"k": "é"})
        assert (await m.receive()).data == {"k": [1, 2.5, "s", None, True]}
        assert (await j.receive()).data == {"k": "é"}


async def test_request_reply_through_handler(hub: RunningHub) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "client") as client,
        TranscendentalWebSocket(hub.url, "server") as server,
    ):

        @server.on("add")
        async def add(message: Message) -> int:
            return int(message.data["a"]) + int(message.data["b"])

        assert await client.request("server", "add", {"a": 2, "b": 40}) == 42
        results = []
        async with trio.open_nursery() as nursery:
            for i in range(20):

                async def one(i: int = i) -> None:
                    results.append(await client.request("server", "add", {"a": i, "b": 1}))

                nursery.start_soon(one)
        assert sorted(results) == list(range(1, 21))


async def test_error_frames_are_counted_all_and_logged_ten_a_minute(
    hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop sending to an id that never connected must not flood the log
    (a stranger's run printed 568 lines): every error frame is counted and kept
    in ``last_error``; 10 a minute are logged."""
    async with TranscendentalWebSocket(hub.url, "looper") as looper:
        with caplog.at_level(logging.WARNING, logger="genesis_trio.client"):
            for n in range(50):
                await looper.send("nobody", "n", n)
            await looper.flush()  # the hub writes the error frames before the acks
        assert looper.statistics().error_frames == 50
        assert looper.last_error is not None
        assert looper.last_error.seq == 50
    logged = [r for r in caplog.records if "hub reported unknown_target" in r.getMessage()]
    assert len(logged) == 10


async def test_unknown_target_gets_error_frame(hub: RunningHub) -> None:
    async with TranscendentalWebSocket(hub.url, "lonely") as lonely:
        await lonely.send("nobody", "hello", 1)
        with pytest.raises(RemoteError) as info:
            await lonely.request("nobody", "ask", timeout=5)
        assert info.value.code == "unknown_target"
        await lonely.flush()
        assert lonely.last_error is not None
        assert lonely.last_error.code == "unknown_target"
        assert lonely.last_error.seq == 1
        assert lonely.statistics().error_frames == 2


async def test_failing_handler_is_contained(hub: RunningHub) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "asker") as asker,
        TranscendentalWebSocket(hub.url, "fragile") as fragile,
        TranscendentalWebSocket(hub.url, "bystander") as bystander,
    ):

        @fragile.on("boom")
        async def boom(message: Message) -> None:
            raise ValueError("kaboom")

        @fragile.on("ok")
        async def ok(message: Message) -> str:
            return "fine"

        with pytest.raises(RemoteError) as info:
            await asker.request("fragile", "boom")
        assert info.value.code == "handler_error"
        assert "kaboom" in info.value.message
        await asker.send("fragile", "boom")  # not a request: nothing to answer
        assert await asker.request("fragile", "ok") == "fine"
        assert fragile.statistics().errors_contained == 2
        await asker.send("bystander", "still", "alive")
        assert (await bystander.receive()).data == "alive"
        assert hub.hub.statistics().active_connections == 3


async def test_hub_handler_error_is_contained(hub: RunningHub) -> None:
    calls: list[Any] = []

    @hub.hub.on("explode")
    async def explode(message: Message) -> None:
        calls.append(message.data)
        raise RuntimeError("hub-side failure")

    @hub.hub.on("time")
    async def now(message: Message) -> str:
        return "tick"

    async with (
        TranscendentalWebSocket(hub.url, "x") as x,
        TranscendentalWebSocket(hub.url, "y") as y,
    ):
        before = hub.hub.statistics().errors_contained
        with pytest.raises(RemoteError) as info:
            await x.request("$hub", "explode", 1)
        assert info.value.code == "handler_error"
        assert hub.hub.statistics().errors_contained == before + 1
        assert await x.request("$hub", "time") == "tick"
        await x.send("y", "ping", 7)
        assert (await y.receive()).data == 7
        with pytest.raises(RemoteError) as info2:
            await x.request("$hub", "nope")
        assert info2.value.code == "no_handler"
    assert calls == [1]


async def test_request_timeout(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery)
        async with memory.client("impatient") as impatient, memory.client("silent") as silent:
            started = trio.current_time()
            with pytest.raises(RequestTimeout):
                await impatient.request("silent", "question", timeout=7.0)
            assert trio.current_time() - started == pytest.approx(7.0)
            msg = await silent.receive()  # no handler: it was queued for receive()
            assert msg.id is not None
            await silent.reply(msg, "late answer")  # too late: nobody waits, nothing breaks
        nursery.cancel_scope.cancel()


async def test_topics_fan_out(hub: RunningHub) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "pub") as pub,
        TranscendentalWebSocket(hub.url, "s1", topics=["news"]) as s1,
        TranscendentalWebSocket(hub.url, "s2") as s2,
        TranscendentalWebSocket(hub.url, "s3") as s3,
    ):
        await s2.subscribe("news", "sport")
        for i in range(50):
            await pub.publish("news", "headline", i)
        await pub.publish("sport", "score", "1-0")
        assert [(await s1.receive()).data for _ in range(50)] == list(range(50))
        got2 = [(await s2.receive()).data for _ in range(51)]
        assert got2 == [*range(50), "1-0"]
        await s2.unsubscribe("news")
        await pub.publish("news", "headline", "late")
        await pub.publish("sport", "score", "2-0")
        assert (await s2.receive()).data == "2-0"
        assert (await s1.receive()).data == "late"
        await pub.flush()
        assert s3.statistics().messages_received == 0
        assert (await s1.receive()).topic == "news" if s1.statistics().inbox else True


async def test_hub_sends_to_component(hub: RunningHub) -> None:
    async with TranscendentalWebSocket(hub.url, "component_123") as comp:
        ok = await hub.hub.send_message_transcendentally(
            "component_123", {"type": "notification", "content": "Actualización disponible"}
        )
        assert ok is True
        msg = await comp.receive()
        assert msg.type == "notification"
        assert msg.sender == "$hub"
        assert msg.data == {"content": "Actualización disponible"}
        assert await hub.hub.send_message_transcendentally("ghost", {"type": "x"}) is False
        assert await hub.hub.publish("nobody-listens", "x") == 0
        with pytest.raises(UnknownComponent):
            await hub.hub.send("ghost", "x")
        with pytest.raises(ValueError, match="type"):
            await hub.hub.publish("t", "")


async def test_process_message_dispatches_and_returns(hub: RunningHub) -> None:
    ws = TranscendentalWebSocket(hub.url, "seed")

    @ws.on("data_update")
    async def update(message: Message) -> str:
        return f"processed {message.data['content']}"

    result = await ws.process_message({"type": "data_update", "content": "Nueva información"})
    assert result == "processed Nueva información"
    assert await ws.process_message(Message("unknown")) is None
    assert (await ws.receive()).type == "unknown"  # the default: queued for receive()

    async def fallback(message: Message) -> str:
        return "default:" + message.type

    ws.set_default_handler(fallback)
    assert await ws.process_message({"type": "other"}) == "default:other"


async def test_seed_style_connect_then_run(hub: RunningHub) -> None:
    ws = TranscendentalWebSocket(hub.url, "seedy")
    got = trio.Event()

    @ws.on("note")
    async def note(message: Message) -> None:
        got.set()

    await ws.connect()
    assert ws.state == "connected"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.run)
        await hub.hub.send_message_transcendentally("seedy", {"type": "note"})
        await got.wait()
        await ws.aclose()
    assert ws.state == "closed"


async def test_second_connection_with_same_id_replaces_first(hub: RunningHub) -> None:
    events: list[LinkEvent] = []
    first = TranscendentalWebSocket(hub.url, "dup", on_link_event=events.append)
    async with trio.open_nursery() as nursery:
        await first.connect()

        async def run_first() -> None:
            with pytest.raises(ConnectionClosed) as info:
                await first.run()
            assert info.value.code == CloseCode.REPLACED

        nursery.start_soon(run_first)
        async with (
            TranscendentalWebSocket(hub.url, "sender") as sender,
            TranscendentalWebSocket(hub.url, "dup") as second,
        ):
            await sender.send("dup", "hi", 1)
            assert (await second.receive()).data == 1
    assert isinstance(events[0], Connected)
    assert isinstance(events[-1], Disconnected)
    assert events[-1].code == CloseCode.REPLACED
    assert events[-1].will_retry is False
    assert hub.hub.statistics().replaced_connections == 1


async def test_close_is_idempotent_and_ends_session(hub: RunningHub) -> None:
    ws = TranscendentalWebSocket(hub.url, "leaver")
    async with ws:
        await ws.send("leaver", "self", 1)
        assert (await ws.receive()).data == 1
    await ws.aclose()
    assert ws.closed
    async with TranscendentalWebSocket(hub.url, "other") as other:
        with pytest.raises(RemoteError):
            await other.request("leaver", "are-you-there", timeout=5)


async def test_batches_never_exceed_the_frame_limit(hub: RunningHub) -> None:
    big = "x" * 4096
    async with TranscendentalWebSocket(hub.url, "bulk", max_message_size=64 * 1024) as ws:
        async with trio.open_nursery() as nursery:

            async def sender() -> None:
                for i in range(600):
                    await ws.send("bulk", "blob", [i, big])

            nursery.start_soon(sender)
            got = [(await ws.receive()).data[0] for _ in range(600)]
        assert got == list(range(600))
        stats = ws.statistics()
        assert stats.connects == 1  # no 1009 and no reconnect along the way
        assert stats.collapse_factor <= 64 * 1024 / 4096 + 1


async def test_a_message_too_large_for_a_client_becomes_a_notice(hub: RunningHub) -> None:
    async with (
        TranscendentalWebSocket(hub.url, "roomy") as roomy,
        TranscendentalWebSocket(hub.url, "tiny", max_message_size=2048) as tiny,
    ):
        await roomy.send("tiny", "small", 1)
        await roomy.send("tiny", "huge", "y" * 10_000)
        await roomy.send("tiny", "small", 2)
        first, notice, last = [await tiny.receive() for _ in range(3)]
        assert (first.data, last.data) == (1, 2)
        assert notice.type == "huge"
        assert notice.data is None
        assert notice.error is not None
        assert notice.error["code"] == "too_large"
        assert (notice.seq, last.seq) == (2, 3)
        assert tiny.statistics().connects == 1
        with pytest.raises(RemoteError) as info:
            await roomy.request("tiny", "huge-request", "z" * 10_000, timeout=5)
        assert info.value.code == "too_large"


async def test_close_codes_count_every_link_by_the_code_it_ended_with(
    hub_factory: Any,
) -> None:
    """Links refused before their welcome (1008 credential, 4000 bad hello) are
    counted too: a stranger saw no 1008 at all. A client's own close frame reads
    as 1006 (Hypercorn does not pass its code to the app: docs/metrics.md);
    ``bye`` ends with the hub's 1000."""
    running = await hub_factory(authenticator=StaticTokens([{"token": "t" * 32, "sub": "ok"}]))
    clean = await RawLink.open(running.port)
    await clean.hello("ok", token="t" * 32)
    await clean.send({"t": "bye"})
    while await clean.receive() is not None:
        pass
    await clean.drop()
    refused = await RawLink.open(running.port)
    await refused.send({"t": "hello", "v": 1, "id": "ok", "token": "w" * 32})
    while await refused.receive() is not None:
        pass
    bad = await RawLink.open(running.port)
    await bad.send({"t": "hello", "v": 1, "id": 7})
    while await bad.receive() is not None:
        pass
    dropped = await RawLink.open(running.port)
    await dropped.hello("ok", token="t" * 32)
    await dropped.drop()
    wanted = {1000: 1, 1008: 1, 4000: 1, 1006: 1}

    async def counted() -> bool:  # the hub notices the dropped socket in its own time
        return running.hub.statistics().close_codes == wanted

    await wait_until(counted, 10)
    assert (clean.close_code, refused.close_code, bad.close_code) == (1000, 1008, 4000)
