"""What every component offers over a dispatcher: handlers, requests, receiving.

:class:`ComponentBase` is shared by the network client
(:class:`~genesis_trio.TranscendentalWebSocket`) and the hub's in-process
components (:class:`~genesis_trio.LocalComponent`), so both have one API.
A subclass supplies :meth:`ComponentBase._enqueue` (how a body leaves) and
the dispatcher that its link or session feeds.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import trio

from .._core.errors import ErrorCode, LocalProtocolError, RequestTimeout
from .._core.frames import HUB_ID, Body
from .._core.message import Message, reply_body
from .dispatch import Dispatcher, Handler, Pending


class ComponentBase:
    """Handlers, requests, replies, presence and receiving (see the module docstring)."""

    _dispatcher: Dispatcher
    _request_timeout: float = 30.0
    _ids: itertools.count[int]

    @property
    def component_id(self) -> str:
        """This component's id."""
        raise NotImplementedError

    async def _enqueue(self, body: Body) -> int:
        """Send one body (checked by the subclass); return what ``send`` returns."""
        raise NotImplementedError

    # -- handlers -----------------------------------------------------------------

    def add_handler(self, type: str, handler: Handler) -> None:
        """Call ``handler`` for every message of ``type``; for requests its result is the reply."""
        self._dispatcher.handlers[type] = handler

    def on(self, type: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add_handler`."""

        def register(handler: Handler) -> Handler:
            self.add_handler(type, handler)
            return handler

        return register

    def set_default_handler(self, handler: Handler | None) -> None:
        """Handle types with no handler (None: queue them for :meth:`receive`)."""
        self._dispatcher.default_handler = handler

    # -- sending ----------------------------------------------------------------------

    async def send_message(self, message: Message | Mapping[str, Any]) -> int:
        """Send a full message (a :class:`Message` or a wire-body dict)."""
        return await self._enqueue(Message.coerce(message).body())

    async def request(
        self,
        to: str,
        type: str,
        data: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request deadline is the API
    ) -> Any:
        """Send a request and return the reply's data.

        Raises :class:`RemoteError` if the peer's handler failed or the target
        is unknown, :class:`RequestTimeout` after ``timeout`` seconds
        (default ``request_timeout``).
        """
        rid = f"{self.component_id}.{next(self._ids)}"
        pending = Pending()
        registry = self._dispatcher.pending
        registry[rid] = pending
        limit = self._request_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                await self._enqueue({"type": type, "data": data, "to": to, "id": rid})
                await pending.event.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no reply to {type!r} from {to!r} within {limit} s") from None
        finally:
            registry.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def reply(self, request: Message, data: Any = None, *, error: str | None = None) -> int:
        """Answer ``request`` (a message with an ``id``) with ``data`` or an error message."""
        if request.id is None or request.sender is None:
            raise LocalProtocolError("only a received request (with id and sender) can be answered")
        failure = (ErrorCode.HANDLER_ERROR, error) if error is not None else None
        return await self._enqueue(
            reply_body(request.type, request.sender, request.id, data=data, error=failure)
        )

    async def _reply(self, request: Message, data: Any, error: str | None) -> int:
        return await self.reply(request, data, error=error)

    async def presence(self, topic: str) -> list[dict[str, Any]]:
        """The components subscribed to ``topic`` now: ``[{"id", "connected", "node"}]``.

        Subscribe to ``$presence`` to be told of every change after (docs/api.md).
        """
        members: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await self.request(HUB_ID, "presence", {"topic": topic, "after": after})
            members.extend(page["members"])
            after = page["next"]
            if after is None:
                return members

    # -- receiving ----------------------------------------------------------------

    async def receive(self) -> Message:
        """The next message that no handler took (in order)."""
        return await self._dispatcher.receive()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._dispatcher.messages()

    async def process_message(self, message: Message | Mapping[str, Any]) -> Any:
        """Dispatch one message through the handlers and return the handler's result.

        With no handler for its type (and no default handler) the message is
        queued for :meth:`receive` and the result is None.
        """
        return (await self._dispatcher.dispatch(Message.coerce(message)))[1]
