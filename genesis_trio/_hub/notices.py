"""Notices in place of messages a client cannot receive (docs/protocol.md §2.3).

A message too large for a client's ``max_size``, or whose data its codec
cannot carry, is replaced, with the same sequence number, by a notice
``{type, from, error: {code, msg}}``: the gap is never silent. If the
message was a request, its sender also gets the error as the reply, from
``$hub``, at once (even into a full buffer: it must not wait).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .._core.codec import EncodedBody
from .._core.errors import ErrorCode
from .._core.frames import HUB_ID
from .._core.message import reply_body
from .link import HubLink
from .sessions import HubSession, SessionTable
from .stats import HubCounters

Append = Callable[[Sequence[HubSession], EncodedBody, HubSession | None], None]
"""Appends a body to sessions' logs (the router's ``append_all``; the last: forced)."""


class Notices:
    """Builds the notices, and answers the requests they replace."""

    def __init__(self, counters: HubCounters, table: SessionTable, append: Append) -> None:
        self.counters = counters
        self.table = table
        self.append = append

    def too_large(self, link: HubLink, out: EncodedBody, size: int) -> bytes:
        """What a client gets in place of a message larger than it accepts (§2.3)."""
        return self._undeliverable(
            link,
            out,
            ErrorCode.TOO_LARGE,
            f"a message of {size} bytes exceeds this client's max_size "
            f"({link.max_frame}); it was not delivered",
        )

    def not_representable(self, link: HubLink, out: EncodedBody, exc: Exception) -> bytes:
        """What a client gets in place of a message its codec cannot carry (§2.3)."""
        self.counters.messages_not_representable += 1
        return self._undeliverable(
            link,
            out,
            ErrorCode.NOT_REPRESENTABLE,
            f"the message's data cannot be encoded for this client "
            f"({link.codec.subprotocol}): {exc}"[:200],
        )

    def _undeliverable(self, link: HubLink, out: EncodedBody, code: ErrorCode, msg: str) -> bytes:
        """A notice in place of a message, with its sequence number: the gap is never silent.

        If the message was a request, its sender also gets the error as the
        reply, at once.
        """
        self.counters.errors_contained += 1
        body = out.body
        kind = body.get("type", "?")
        notice: dict[str, object] = {
            "type": kind,
            "from": body.get("from", HUB_ID),
            "error": {"code": code.value, "msg": msg},
        }
        rid, sender_id = body.get("id"), body.get("from")
        requester = self.table.by_id.get(sender_id) if sender_id else None
        if rid is not None and requester is not None and sender_id is not None:
            reply = reply_body(kind, sender_id, rid, error=(code, msg))
            reply["from"] = HUB_ID
            self.append((requester,), EncodedBody(reply), requester)
        return link.codec.encode(notice)
