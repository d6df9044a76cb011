"""The dispatcher: received messages to the application, in order.

Shared by the client and the hub's in-process components. The reader (a
link's, or the hub's local link) never waits for the application: it hands
each new message to :meth:`Dispatcher.deliver`, which resolves replies to pending
requests at once and queues the message in the inbox. The dispatcher task
(:meth:`Dispatcher.run`) takes the inbox in order, runs the handler of each
message's type (answering requests with its result or its error) or queues
it for ``receive()``, and then *releases* it: only released messages are
acknowledged. The inbox is bounded by the flow-control window.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from .._core.errors import ClosedError, RemoteError
from .._core.frames import Body, Error
from .._core.message import Message
from .signal import Signal

log = logging.getLogger("genesis_trio.client")

Handler = Callable[[Message], Awaitable[Any]]
"""An async function handling one message; its return value answers requests."""


class ErrorCounter(Protocol):
    """Where the dispatcher counts the handler failures it contains."""

    errors_contained: int


@attrs.define(eq=False)
class Pending:
    """A request waiting for its reply."""

    event: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None
    error: RemoteError | None = None


Reply = Callable[[Message, Any, str | None], Awaitable[int]]
"""Sends the reply to a request: ``(request, data, error_message)``."""


class Dispatcher:
    """Inbox, handlers, pending requests and the application's receive queue."""

    def __init__(
        self,
        inbox_size: int,
        counters: ErrorCounter,
        *,
        reply: Reply,
        release: Callable[[int, int], None],
    ) -> None:
        self.handlers: dict[str, Handler] = {}
        self.default_handler: Handler | None = None
        self.pending: dict[str, Pending] = {}
        """Requests waiting for their reply, by request id."""
        self.inbox: deque[tuple[int, int, Body]] = deque()
        """(generation, seq, body) of messages received and not yet dispatched."""
        self.generation = 0
        """Bumped whenever sequence numbers restart (a new session or epoch)."""
        self._wake = Signal()
        self._app_send, self._app_recv = trio.open_memory_channel[Message](inbox_size)
        self._counters = counters
        self._reply = reply
        self._release = release

    def new_generation(self) -> None:
        """Numbering restarted: messages still in the inbox are not ours to acknowledge."""
        self.generation += 1

    def deliver(self, seq: int, body: Body) -> None:
        """A new message from the hub (from the reader: never waits)."""
        re = body.get("re")
        if re is not None:
            waiter = self.pending.get(re)
            if waiter is not None:
                error = body.get("error")
                if error is not None:
                    waiter.error = RemoteError(str(error.get("code")), str(error.get("msg", "")))
                else:
                    waiter.value = body.get("data")
                waiter.event.set()
        self.inbox.append((self.generation, seq, body))

    def woken(self) -> None:
        """The reader delivered what one frame carried: run."""
        self._wake.set()

    def error(self, frame: Error) -> bool:
        """An error frame from the hub: fail the request it names; False if none."""
        waiter = self.pending.get(frame.id) if frame.id is not None else None
        if waiter is None:
            return False
        waiter.error = RemoteError(frame.code, frame.msg)
        waiter.event.set()
        return True

    async def run(self) -> None:
        """Dispatch the inbox in order, forever (the client's ``run`` owns this task)."""
        try:
            await self._run()
        except _Closing:  # closing: what is left stays unacknowledged (kept by the hub)
            await trio.sleep_forever()

    async def _run(self) -> None:
        inbox = self.inbox
        handlers = self.handlers
        while True:
            if not inbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            generation, seq, body = inbox.popleft()
            if body.get("re") is None:
                msg = Message.from_body(body, seq)
                if (
                    inbox
                    and self.default_handler is None
                    and msg.type not in handlers
                    and self._queue_nowait(msg)
                ):
                    pass  # queued for receive() without a checkpoint: more are waiting
                else:
                    await self._dispatch_contained(msg)
            self._release(generation, seq)

    def _queue_nowait(self, msg: Message) -> bool:
        try:
            self._app_send.send_nowait(msg)
        except trio.WouldBlock:
            return False
        except trio.ClosedResourceError:
            raise _Closing("the client is closing") from None
        return True

    async def dispatch(self, msg: Message) -> tuple[bool, Any]:
        """Run ``msg``'s handler: (True, its result), or queue it: (False, None)."""
        handler = self.handlers.get(msg.type) or self.default_handler
        if handler is None:
            # Queue without a checkpoint when there is room: ``send`` would yield
            # after queueing, and an application that takes the message and closes
            # at once would close before the message is released (and see it again).
            if not self._queue_nowait(msg):
                try:
                    await self._app_send.send(msg)
                except trio.ClosedResourceError:
                    raise _Closing("the client is closing") from None
            return False, None
        return True, await handler(msg)

    async def _dispatch_contained(self, msg: Message) -> None:
        """Run one message's handler (or queue it), containing any failure."""
        try:
            handled, result = await self.dispatch(msg)
        except _Closing:
            raise  # not a handler's failure: the message stays unacknowledged
        except Exception as exc:
            self._counters.errors_contained += 1
            log.exception("handler for %r failed (contained)", msg.type)
            if msg.id is not None and msg.sender is not None:
                await self._reply_quietly(msg, None, f"{type(exc).__name__}: {exc}"[:200])
        else:
            if handled and msg.id is not None and msg.sender is not None:
                await self._reply_quietly(msg, result, None)

    async def _reply_quietly(self, msg: Message, data: Any, error: str | None) -> None:
        try:
            await self._reply(msg, data, error)
        except (ValueError, TypeError) as exc:
            self._counters.errors_contained += 1
            log.warning("could not send the reply to %r: %s", msg.type, exc)
            await self._reply(msg, None, f"reply not encodable: {exc}"[:200])

    async def receive(self) -> Message:
        """The next message no handler took."""
        try:
            return await self._app_recv.receive()
        except trio.EndOfChannel:
            raise ClosedError("the client is closed") from None

    def messages(self) -> AsyncIterator[Message]:
        """Messages no handler took, until the client closes.

        A plain iterator, not an async generator: leaving an ``async for``
        early leaves nothing to clean up.
        """
        return _Messages(self._app_recv)

    def close(self) -> None:
        """No more messages for the application (``receive`` raises ClosedError)."""
        self._app_send.close()


class _Messages:
    """``async for`` over a receive channel; ends when the channel is closed."""

    __slots__ = ("_channel",)

    def __init__(self, channel: trio.MemoryReceiveChannel[Message]) -> None:
        self._channel = channel

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._channel.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class _Closing(ClosedError):
    """The application's side closed while a message was being handed over (never acked)."""
