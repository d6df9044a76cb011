"""A message handed over while the client closes is never acknowledged (it stays in the session)."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing

from genesis_trio._runtime.dispatch import Dispatcher


@attrs.define
class Counters:
    errors_contained: int = 0


async def test_a_message_arriving_as_the_client_closes_is_not_released() -> None:
    released: list[int] = []

    async def reply(*args: Any) -> None:
        raise AssertionError("no request here")

    counters = Counters()
    dispatcher = Dispatcher(1, counters, reply=reply, release=lambda g, seq: released.append(seq))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.deliver(1, {"type": "a", "from": "x"})
        dispatcher.woken()
        await trio.testing.wait_all_tasks_blocked()
        assert released == [1]  # queued for receive(): released
        dispatcher.close()  # the application's side closes...
        dispatcher.deliver(2, {"type": "b", "from": "x"})  # ...as more arrive
        dispatcher.deliver(3, {"type": "c", "from": "x"})
        dispatcher.woken()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert released == [1]  # never acknowledged: the hub keeps them for the next link
    assert counters.errors_contained == 0  # not a handler's failure
