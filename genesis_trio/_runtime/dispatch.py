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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, Protocol

import attrs
import trio

from .._core.errors import ClosedError, RemoteError
from .._core.frames import Body, Error
from .._core.message import Message, message_from_body
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

    def settle(self, body: Body) -> None:
        """The reply arrived: keep its data or its error, and wake the request."""
        error = body.get("error")
        if error is not None:
            self.error = RemoteError(str(error.get("code")), str(error.get("msg", "")))
        else:
            self.value = body.get("data")
        self.event.set()


Reply = Callable[[Message, Any, str | None], Awaitable[int]]
"""Sends the reply to a request: ``(request, data, error_message)``."""


RECEIVE_TURNS: Final = 64
"""``receive()`` calls served from the queue between two schedule points.

Every call is a cancellation point; while messages are waiting, only one
call in this many also lets other tasks run, so a burst is handed over
without a scheduler pass per message (an application reading in a loop
still yields at least this often).
"""


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
        self._ready: deque[Message | tuple[int, Body]] = deque()
        """Handed to the application, waiting for ``receive()``: a message, or
        ``(seq, body)`` of one not built yet (built when the application takes it)."""
        self._size = inbox_size
        """Bound on :attr:`_ready` (the dispatcher waits for room)."""
        self._readable = trio.lowlevel.ParkingLot()
        """``receive()`` callers waiting for a message."""
        self._room = trio.lowlevel.ParkingLot()
        """The dispatcher (or ``process_message``) waiting for room in the queue."""
        self._closed = False
        self._turns = RECEIVE_TURNS
        self._counters = counters
        self._reply = reply
        self._release = release

    def new_generation(self) -> None:
        """Numbering restarted: messages still in the inbox are not ours to acknowledge."""
        self.generation += 1

    def deliver(self, seq: int, body: Body) -> None:
        """A new message from the hub (from the reader: never waits)."""
        if "re" in body:
            self._resolve(body)
        self.inbox.append((self.generation, seq, body))

    def deliver_all(self, seq: int, bodies: Iterable[Body]) -> None:
        """:meth:`deliver` consecutive messages from ``seq`` on, then :meth:`woken`."""
        append = self.inbox.append
        generation = self.generation
        for body in bodies:
            if "re" in body:
                self._resolve(body)
            append((generation, seq, body))
            seq += 1
        self._wake.set()

    def _resolve(self, body: Body) -> None:
        """A reply: hand its data or error to the request waiting for it (if any)."""
        re = body.get("re")
        waiter = self.pending.get(re) if re is not None else None
        if waiter is not None:
            waiter.settle(body)

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
        while True:
            if not inbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._queue_run()
            if inbox:  # a handler to run, a full queue, or closing: one message, with waits
                generation, seq, body = inbox.popleft()
                if body.get("re") is None:  # replies were resolved on delivery
                    await self._dispatch_contained(Message.from_body(body, seq))
                self._release(generation, seq)

    def _queue_run(self) -> None:
        """Queue the leading messages that no handler takes, without waiting; release them.

        Stops at a message with a handler, when the queue is full or closed.
        One release covers the run (acknowledgements are cumulative), and
        receivers are woken once.
        """
        inbox = self.inbox
        ready = self._ready
        handlers = self.handlers
        room = 0 if self._closed or self.default_handler is not None else self._size - len(ready)
        generation = last = 0
        queued = False
        while inbox:
            gen, seq, body = inbox[0]
            if body.get("re") is None:  # replies were resolved on delivery: release only
                if room <= 0 or body["type"] in handlers:
                    break
                ready.append((seq, body))
                room -= 1
                queued = True
            inbox.popleft()
            if gen != generation and last:
                self._release(generation, last)
            generation, last = gen, seq
        if last:
            self._release(generation, last)
        if queued and self._readable:
            self._readable.unpark_all()

    def _put(self, msg: Message) -> bool:
        """Queue ``msg`` for ``receive()`` if there is room (False: full)."""
        if self._closed:
            raise _Closing("the client is closing")
        if len(self._ready) >= self._size:
            return False
        self._ready.append(msg)
        if self._readable:
            self._readable.unpark_all()
        return True

    async def dispatch(self, msg: Message) -> tuple[bool, Any]:
        """Run ``msg``'s handler: (True, its result), or queue it: (False, None)."""
        handler = self.handlers.get(msg.type) or self.default_handler
        if handler is None:
            # Queue without a checkpoint when there is room: a checkpoint after
            # queueing would let an application that takes the message and closes
            # at once close before the message is released (and see it again).
            while not self._put(msg):
                await self._room.park()
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
        """The next message no handler took.

        Always a cancellation point; a schedule point when it waits, and at
        least every :data:`RECEIVE_TURNS` calls while messages are waiting.
        """
        ready = self._ready
        if ready and self._turns > 0:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._turns -= 1
        else:
            self._turns = RECEIVE_TURNS
            if ready:
                await trio.lowlevel.checkpoint()
            while not ready:
                if self._closed:
                    raise ClosedError("the client is closed")
                await self._readable.park()
        item = ready.popleft()
        if len(ready) == self._size - 1:  # it was full: a waiting dispatcher may go on
            self._room.unpark_all()
        if isinstance(item, Message):
            return item
        return message_from_body(item[1], item[0])

    def messages(self) -> AsyncIterator[Message]:
        """Messages no handler took, until the client closes.

        A plain iterator, not an async generator: leaving an ``async for``
        early leaves nothing to clean up.
        """
        return _Messages(self)

    def close(self) -> None:
        """No more messages for the application (``receive`` raises ClosedError once
        the queue is empty)."""
        self._closed = True
        self._readable.unpark_all()
        self._room.unpark_all()


class _Messages:
    """``async for`` over the receive queue; ends when the dispatcher is closed."""

    __slots__ = ("_dispatcher",)

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._dispatcher.receive()
        except ClosedError:
            raise StopAsyncIteration from None


class _Closing(ClosedError):
    """The application's side closed while a message was being handed over (never acked)."""
