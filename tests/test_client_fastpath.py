"""The client's hot paths: lazy messages, batched hand-over and acks, sends without a pass each.

``receive()`` and ``send()`` are cancellation points on every call but let
other tasks run only every few calls while they need not wait; messages
for ``receive()`` are built when the application takes them; the
dispatcher releases (acknowledges) a run of messages once.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from genesis_trio import ClosedError, Message
from genesis_trio._client.keeper import SEND_TURNS
from genesis_trio._core.message import message_from_body
from genesis_trio._runtime.dispatch import RECEIVE_TURNS, Dispatcher, Pending
from genesis_trio.testing import start_memory_hub


@attrs.define
class Counters:
    errors_contained: int = 0


async def _no_reply(*args: Any) -> int:
    raise AssertionError("no request here")


def _dispatcher(size: int = 1000) -> tuple[Dispatcher, list[tuple[int, int]]]:
    released: list[tuple[int, int]] = []
    dispatcher = Dispatcher(
        size, Counters(), reply=_no_reply, release=lambda g, seq: released.append((g, seq))
    )
    return dispatcher, released


def _body(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "n", "data": n, "from": "peer", "to": "me", **extra}


@pytest.mark.parametrize(
    "body",
    [
        {"type": "t"},
        {"type": "t", "data": [1, 2], "from": "a", "to": "b"},
        {"type": "t", "data": None, "from": "a", "topic": "room.1", "id": "a.1"},
        {"type": "t", "from": "$hub", "to": "b", "re": "b.3", "error": {"code": "x", "msg": "y"}},
    ],
)
def test_a_message_built_from_a_body_equals_the_public_constructors(body: dict[str, Any]) -> None:
    fast = message_from_body(body, 7)
    assert type(fast) is Message
    assert fast == Message.from_body(body, 7)
    assert repr(fast) == repr(Message.from_body(body, 7))
    assert attrs.asdict(fast) == attrs.asdict(Message.from_body(body, 7))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.type = "other"  # type: ignore[misc]


async def test_a_run_of_messages_is_queued_in_order_and_released_once() -> None:
    dispatcher, released = _dispatcher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver_all(1, [_body(i) for i in range(1, 201)])
        await trio.testing.wait_all_tasks_blocked()
        assert released == [(0, 200)]  # one cumulative release for the whole run
        got = [await dispatcher.receive() for _ in range(200)]
        assert [m.data for m in got] == list(range(1, 201))
        assert [m.seq for m in got] == list(range(1, 201))
        assert got[0].sender == "peer"
        nursery.cancel_scope.cancel()


async def test_a_handler_in_the_middle_keeps_the_order_and_the_releases() -> None:
    dispatcher, released = _dispatcher()
    seen: list[int] = []
    handled = trio.Event()
    proceed = trio.Event()

    async def handler(msg: Message) -> None:
        seen.append(msg.seq)
        handled.set()
        await proceed.wait()

    dispatcher.handlers["h"] = handler
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        bodies = [_body(1), _body(2), {"type": "h", "from": "peer"}, _body(4), _body(5)]
        dispatcher.deliver_all(1, bodies)
        await handled.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert released == [(0, 2)]  # released before the handler runs
        assert [(await dispatcher.receive()).seq for _ in range(2)] == [1, 2]
        with trio.move_on_after(0.01):  # 4 must not overtake the handler of 3
            await dispatcher.receive()
            pytest.fail("a message overtook a running handler")
        proceed.set()
        assert [(await dispatcher.receive()).seq for _ in range(2)] == [4, 5]
        assert seen == [3]
        assert released == [(0, 2), (0, 3), (0, 5)]
        nursery.cancel_scope.cancel()


async def test_a_reply_resolves_its_request_and_is_not_queued() -> None:
    dispatcher, released = _dispatcher()
    pending = Pending()
    dispatcher.pending["me.1"] = pending
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver_all(1, [_body(1), {"type": "q", "from": "p", "re": "me.1", "data": 42}])
        await pending.event.wait()
        assert pending.value == 42
        await trio.testing.wait_all_tasks_blocked()
        assert released == [(0, 2)]
        assert (await dispatcher.receive()).seq == 1
        with trio.move_on_after(0.01):
            await dispatcher.receive()
            pytest.fail("a reply reached receive()")
        nursery.cancel_scope.cancel()


async def test_receive_is_a_cancellation_point_even_with_messages_waiting() -> None:
    dispatcher, _ = _dispatcher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver_all(1, [_body(i) for i in range(1, 4)])
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await dispatcher.receive()
        assert scope.cancelled_caught
        assert (await dispatcher.receive()).seq == 1  # nothing was lost
        nursery.cancel_scope.cancel()


async def test_receive_lets_other_tasks_run_at_least_every_few_calls() -> None:
    n = 8 * RECEIVE_TURNS
    dispatcher, _ = _dispatcher(size=n)
    passes = 0

    async def other() -> None:
        nonlocal passes
        while True:
            passes += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver_all(1, [_body(i) for i in range(n)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()  # it runs (and never blocks)
        before = passes
        for _ in range(n):
            await dispatcher.receive()
        # Fair: a schedule point at least every RECEIVE_TURNS calls (the last pass
        # may not have run yet); and not one per message.
        assert 6 <= passes - before <= 9
        nursery.cancel_scope.cancel()


async def test_a_full_queue_holds_the_dispatcher_and_receive_frees_it() -> None:
    dispatcher, released = _dispatcher(size=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver_all(1, [_body(i) for i in range(1, 6)])
        await trio.testing.wait_all_tasks_blocked()
        assert released == [(0, 2)]  # only what fits is handed over (and acknowledged)
        assert len(dispatcher.inbox) == 2  # the third waits for room, out of the inbox
        assert [(await dispatcher.receive()).seq for _ in range(5)] == [1, 2, 3, 4, 5]
        await trio.testing.wait_all_tasks_blocked()
        assert released[-1] == (0, 5)
        nursery.cancel_scope.cancel()


async def test_after_close_receive_drains_what_was_handed_over_then_raises() -> None:
    dispatcher, released = _dispatcher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver_all(1, [_body(1), _body(2)])
        await trio.testing.wait_all_tasks_blocked()
        dispatcher.close()
        dispatcher.deliver_all(3, [_body(3)])
        await trio.testing.wait_all_tasks_blocked()
        assert released == [(0, 2)]  # 3 arrived after closing: never acknowledged
        assert [(await dispatcher.receive()).seq for _ in range(2)] == [1, 2]
        with pytest.raises(ClosedError):
            await dispatcher.receive()
        nursery.cancel_scope.cancel()


async def test_a_burst_of_sends_leaves_in_few_frames(nursery: trio.Nursery) -> None:
    memory = await start_memory_hub(nursery)
    async with memory.client("burst") as ws:
        n = 10 * SEND_TURNS
        for i in range(n):
            await ws.send("burst", "n", i)
        assert [(await ws.receive()).data for _ in range(n)] == list(range(n))
        stats = ws.statistics()
        assert stats.messages_sent == n
        assert stats.frames_sent <= 2 * n // SEND_TURNS  # one pass appends a frame's worth


async def test_send_is_a_cancellation_point_even_with_room(nursery: trio.Nursery) -> None:
    memory = await start_memory_hub(nursery)
    async with memory.client("cancelled") as ws:
        with trio.CancelScope() as scope:
            scope.cancel()
            await ws.send("cancelled", "n", 1)
        assert scope.cancelled_caught
        assert ws.statistics().messages_sent == 0  # nothing was appended
        assert await ws.send("cancelled", "n", 2) == 1
        assert (await ws.receive()).data == 2


async def test_the_send_fast_path_rejects_what_check_body_rejects(nursery: trio.Nursery) -> None:
    memory = await start_memory_hub(nursery)
    async with memory.client("checker") as ws:
        assert await ws.send("checker", "ok", 1) == 1  # "checker" is now the remembered target
        bad: list[tuple[Any, Any]] = [
            ("", "t"),
            ("bad id!", "t"),
            ("$presence", "t"),
            ("checker", ""),
            ("checker", "x" * 129),
            ("checker", 5),
        ]
        for to, kind in bad:
            with pytest.raises(ValueError, match=r"field '(to|type)'"):
                await ws.send(to, kind)
        for topic in ["", ".x", "$presence"]:
            with pytest.raises(ValueError, match=r"field 'topic'"):
                await ws.publish(topic, "t")
        assert await ws.send("$hub", "ping-me", None) == 2  # the hub's own id is a valid target
        assert ws.statistics().messages_sent == 2
