"""Hidden nurseries (an ``async with`` owning one) and the one exception they can hold."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio


async def start_hidden(
    run: Callable[..., Awaitable[Any]], abandon: Callable[[], None] | None = None
) -> AsyncExitStack:
    """Open a nursery and ``start`` ``run`` in it; the stack that closes it, for ``__aexit__``.

    If starting fails (``run`` failed, or the caller was cancelled), the
    nursery is cancelled (``abandon`` is called first: ``run`` may shield
    itself once started) and closed, and the failure raised.
    """
    stack = AsyncExitStack()
    nursery = await stack.enter_async_context(trio.open_nursery())
    try:
        await nursery.start(run)
    except BaseException:
        if abandon is not None:
            abandon()
        nursery.cancel_scope.cancel()
        await stack.aclose()
        raise
    return stack


async def close_hidden(
    stack: AsyncExitStack | None,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: Any,
) -> None:
    """Close a :func:`start_hidden` nursery from ``__aexit__``. It holds at most the
    block's exception and ``run``'s failure: raise the one exception, not a group."""
    if stack is None:
        return
    try:
        await stack.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        leaf = single_exception(group)
        if leaf is None:
            raise
        raise leaf from None


def single_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception inside ``group`` (nested groups included), or None if several.

    For a nursery the caller cannot see (``async with`` owning one), where at
    most one exception is possible: raise it, not a group holding it.
    """
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


class ShieldOnStart:
    """A task status that shields ``scope`` when the task reports it has started."""

    __slots__ = ("_scope", "_status")

    def __init__(self, scope: trio.CancelScope, status: trio.TaskStatus[None]) -> None:
        self._scope = scope
        self._status = status

    def started(self, value: None = None) -> None:
        """Report; then shield the scope, unless the start was cancelled meanwhile (Trio
        then leaves the task where it is, to be cancelled: it must not be shielded)."""
        self._status.started(value)
        if trio.current_effective_deadline() != -math.inf:
            self._scope.shield = True
