"""Bounds on links and sessions (issue 8, defect 6): refused with a documented answer, counted."""

from __future__ import annotations

import pytest
import trio

from genesis_trio import CloseCode, TranscendentalWebSocket
from genesis_trio.testing import MemoryHub, start_hub, start_memory_hub

from .support.processes import start_cli_hub
from .support.rawws import RawLink, Refused


async def test_connection_limits_answer_with_http_status(nursery: trio.Nursery) -> None:
    running = await start_hub(nursery, max_connections=3, max_connections_per_address=2)
    hub, info = running.hub, running.info
    first = await RawLink.open(info.port)
    second = await RawLink.open(info.port)
    with pytest.raises(Refused) as per_address:
        await RawLink.open(info.port)
    assert per_address.value.status == 429
    assert "too many connections from this address" in per_address.value.body
    third = await RawLink.open(info.port, source="127.0.0.2")  # another address: admitted
    with pytest.raises(Refused) as total:
        await RawLink.open(info.port, source="127.0.0.3")
    assert total.value.status == 503
    assert "connection limit (3)" in total.value.body
    assert hub.statistics().connections_refused == 2
    await first.hello("one")
    await first.close()
    with trio.fail_after(5):  # a slot is free again once the first link has ended
        while True:
            try:
                fourth = await RawLink.open(info.port, source="127.0.0.3")
            except Refused:
                await trio.sleep(0.01)
            else:
                break
    for link in (second, third, fourth):
        await link.drop()


async def raw(memory: MemoryHub) -> RawLink:
    return await RawLink.upgrade(await memory.open_stream(), "memory-hub")


async def test_at_the_session_limit_the_longest_away_is_forgotten(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery, max_sessions=3)
        hub = memory.hub
        named_away = await raw(memory)
        await named_away.hello("named")
        anonymous = await raw(memory)
        welcome = await anonymous.hello(None)
        assert welcome["id"].startswith("anon-")
        keeper = await raw(memory)
        await keeper.hello("keeper")
        await named_away.drop()
        await trio.sleep(1)
        await anonymous.drop()  # away for less time than "named", but anonymous: first to go
        await trio.sleep(1)
        assert hub.statistics().sessions == 3
        newcomer = await raw(memory)
        await newcomer.hello("newcomer")
        ids = {row.component_id for row in hub.components()}
        assert ids == {"named", "keeper", "newcomer"}
        later = await raw(memory)
        await later.hello("later")  # now the named one, away the longest, goes
        assert {row.component_id for row in hub.components()} == {
            "keeper",
            "newcomer",
            "later",
        }
        assert hub.statistics().sessions_evicted == 2
        refused = await raw(memory)  # every session is connected: try again later
        await refused.send({"t": "hello", "v": 1, "id": "one-too-many"})
        assert await refused.receive() is None
        assert refused.close_code == CloseCode.TRY_AGAIN_LATER
        assert hub.statistics().sessions_refused == 1
        resumed = await raw(memory)  # a resume needs no new session: admitted
        await keeper.drop()
        await trio.sleep(1)
        await resumed.hello("keeper")
        nursery.cancel_scope.cancel()


async def test_anonymous_sessions_expire_sooner(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery, anonymous_session_expiry=60.0)
        anonymous, named = await raw(memory), await raw(memory)
        await anonymous.hello(None)
        await named.hello("named")
        await anonymous.drop()
        await named.drop()
        await trio.sleep(61 + memory.hub.config.anonymous_session_expiry / 4)
        assert [row.component_id for row in memory.hub.components()] == ["named"]
        assert memory.hub.statistics().sessions_expired == 1
        nursery.cancel_scope.cancel()


async def test_the_reserved_anonymous_prefix_cannot_be_claimed(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery)
        original = await raw(memory)
        welcome = await original.hello(None)
        thief = await raw(memory)
        taken = await thief.hello(welcome["id"])  # without its sid: a fresh anonymous id
        assert taken["id"] != welcome["id"]
        assert taken["id"].startswith("anon-")
        back = await raw(memory)
        await original.drop()
        again = await back.hello(welcome["id"], sid=welcome["sid"], epoch=welcome["epoch"])
        assert again["id"] == welcome["id"]
        assert again["recovered"] is True
        nursery.cancel_scope.cancel()


async def test_a_client_cannot_grow_its_own_buffer_without_bound(autojump_clock: object) -> None:
    """Messages to oneself wait for room like any others (they used to be appended past it)."""
    async with trio.open_nursery() as nursery:
        memory = await start_memory_hub(nursery, retention_messages=10)
        link = await raw(memory)
        await link.hello("narcissus")
        body = {"type": "x", "to": "narcissus"}
        await link.send({"t": "batch", "seq": 1, "m": [body] * 20})  # never acknowledged
        await trio.sleep(memory.hub.config.slow_consumer_timeout + 1)
        assert memory.hub.components()[0].pending == 10
        assert memory.hub.statistics().slow_consumers_closed == 1
        nursery.cancel_scope.cancel()


@pytest.mark.deadline(90)
async def test_a_hello_then_drop_flood_stays_bounded() -> None:
    """8 000 anonymous hello-then-drop cycles used to leave 8 000 sessions for an hour."""
    async with start_cli_hub("--store", "none", "--max-sessions", "300") as hub:

        async def flood(count: int) -> None:
            for _ in range(count):
                link = await RawLink.open(hub.port)
                await link.hello(None)
                await link.drop()

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(flood, 250)
        health = await hub.health()
        assert health["sessions"] <= 300
        async with TranscendentalWebSocket(hub.url, "afterwards") as client:
            await client.send("afterwards", "still", "served")
            assert (await client.receive()).data == "served"
        assert hub.alive
