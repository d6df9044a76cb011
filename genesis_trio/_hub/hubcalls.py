"""Messages addressed to the hub itself (``to: "$hub"``): replies, handlers, built-ins.

Mixed into the :class:`~.router.Router`: a request runs the hub's handler
for its type (or a built-in such as ``presence``), contained, and its
answer goes back to the requester's session like any message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._core.codec import EncodedBody
from .._core.errors import ErrorCode
from .._core.frames import HUB_ID, Body, Error
from .._core.message import Message, reply_body
from .auth import Identity
from .sessions import HubSession
from .stats import HubCounters

log = logging.getLogger("genesis_trio.hub")

HubHandler = Callable[[Message], Awaitable[Any]]
"""A hub-side handler for messages addressed ``to: "$hub"``."""

SystemHandler = Callable[[Identity | None, Message], Any]
"""A built-in ``$hub`` request (``presence``): synchronous, told the sender's identity.

PermissionError answers ``forbidden``, ValueError ``bad_field``.
"""


def always() -> bool:
    """A ``valid`` that always holds."""
    return True


class HubCalls:
    """Answers messages addressed to the hub (see the module docstring)."""

    counters: HubCounters
    handlers: dict[str, HubHandler]
    system: dict[str, SystemHandler]
    on_reply: Callable[[Body], None] | None

    def by_sid(self, sid: str) -> Callable[[], Sequence[HubSession]]:
        """The session ``sid`` (the router's)."""
        raise NotImplementedError

    async def deliver(
        self,
        resolve: Callable[[], Sequence[HubSession]],
        out: EncodedBody,
        valid: Callable[[], bool] = always,
        arrival: str | None = "",
    ) -> int:
        """Append to sessions (the router's)."""
        raise NotImplementedError

    async def hub_message(
        self,
        session: HubSession,
        identity: Identity | None,
        body: Body,
        n: int,
        report: Callable[[Error], None],
    ) -> None:
        """A message addressed to the hub itself: a reply, or run its handler (contained).

        ``report`` sends an error frame to the sender (a message that is no request).
        """
        if body.get("re") is not None:
            if self.on_reply is not None:
                self.on_reply(body)
            return
        kind: str = body["type"]
        rid = body.get("id")
        error: tuple[ErrorCode, str] | None = None
        result: Any = None
        handler = self.handlers.get(kind)
        built_in = self.system.get(kind) if handler is None else None
        try:
            if handler is not None:
                result = await handler(Message.from_body(body, n))
            elif built_in is not None:
                result = built_in(identity, Message.from_body(body, n))
            else:
                error = (ErrorCode.NO_HANDLER, f"the hub has no handler for {kind!r}")
        except PermissionError as exc:
            error = (ErrorCode.FORBIDDEN, str(exc)[:200])
        except Exception as exc:
            if built_in is not None and isinstance(exc, ValueError):
                error = (ErrorCode.BAD_FIELD, str(exc)[:200])
            else:
                self.counters.errors_contained += 1
                log.exception("hub handler for %r failed (contained)", kind)
                error = (ErrorCode.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"[:200])
        if rid is None:
            if error is not None:
                report(Error(error[0], error[1], n))
            return
        reply = reply_body(kind, session.component_id, rid, data=result, error=error)
        reply["from"] = HUB_ID
        await self.deliver(self.by_sid(session.sid), EncodedBody(reply))
