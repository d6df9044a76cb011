"""The application message as users see it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .frames import Body


@attrs.frozen(slots=True)
class Message:
    """One application message.

    ``type`` selects the handler; ``data`` is any value the codec can carry.
    Addressing: ``to`` (a component id) or ``topic``; ``sender`` is stamped
    by the hub. ``id`` marks a request (a reply is expected) and ``re`` a
    reply to the request with that id; ``error`` is set on error replies.
    ``seq`` is the session sequence number it arrived with (0 when local).
    """

    type: str
    data: Any = None
    sender: str | None = None
    to: str | None = None
    topic: str | None = None
    id: str | None = None
    re: str | None = None
    error: Mapping[str, Any] | None = None
    seq: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any], seq: int = 0) -> Message:
        """Build from a wire body (``from`` becomes ``sender``)."""
        return cls(
            type=body["type"],
            data=body.get("data"),
            sender=body.get("from"),
            to=body.get("to"),
            topic=body.get("topic"),
            id=body.get("id"),
            re=body.get("re"),
            error=body.get("error"),
            seq=seq,
        )

    @classmethod
    def coerce(cls, message: Message | Mapping[str, Any]) -> Message:
        """Accept a :class:`Message` or a seed-style dict (``{"type": ..., ...}``)."""
        if isinstance(message, Message):
            return message
        if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
            raise TypeError("a message is a Message or a mapping with a string 'type'")
        extra = {k: v for k, v in message.items() if k not in _BODY_KEYS}
        msg = cls.from_body(message)
        if extra and msg.data is None:  # seed style: {"type": t, "content": ...}
            msg = attrs.evolve(msg, data=extra)
        return msg

    def body(self) -> Body:
        """The wire body of this message (without ``from``)."""
        out: Body = {"type": self.type}
        if self.data is not None:
            out["data"] = self.data
        if self.to is not None:
            out["to"] = self.to
        if self.topic is not None:
            out["topic"] = self.topic
        if self.id is not None:
            out["id"] = self.id
        if self.re is not None:
            out["re"] = self.re
        if self.error is not None:
            out["error"] = dict(self.error)
        return out


def _slot_setters() -> tuple[Callable[[Message, Any], None], ...]:
    fields = ("type", "data", "sender", "to", "topic", "id", "re", "error", "seq")
    return tuple(getattr(Message, name).__set__ for name in fields)


_new = object.__new__
_type, _data, _sender, _to, _topic, _id, _re, _error, _seq = _slot_setters()


def message_from_body(body: Body, seq: int) -> Message:
    """``Message.from_body(body, seq)`` for a body already validated, at half the cost.

    Sets the slots directly instead of going through the frozen class's
    ``__init__`` (one ``object.__setattr__`` call per field): the receive
    path builds one per message.
    """
    msg: Message = _new(Message)
    get = body.get
    _type(msg, body["type"])
    _data(msg, get("data"))
    _sender(msg, get("from"))
    _to(msg, get("to"))
    _topic(msg, get("topic"))
    _id(msg, get("id"))
    _re(msg, get("re"))
    _error(msg, get("error"))
    _seq(msg, seq)
    return msg


_BODY_KEYS = frozenset({"type", "data", "from", "to", "topic", "id", "re", "error"})


def reply_body(
    type: str,
    to: str,
    re: str,
    *,
    data: Any = None,
    error: tuple[str, str] | None = None,
) -> Body:
    """The body that answers request ``re`` of ``to``: ``data``, or ``error=(code, msg)``.

    docs/protocol.md §2.3: ``{type, to, re, data}`` or ``{type, to, re, error}``.
    """
    body: Body = {"type": type, "to": to, "re": re}
    if error is not None:
        body["error"] = {"code": str(error[0]), "msg": error[1]}
    elif data is not None:
        body["data"] = data
    return body
