"""Frames of wire protocol v1 and their validation (sans-IO).

Every WebSocket message is one frame: a map whose ``t`` field names its type.
:func:`parse_frame` turns a decoded map into a typed frame or raises
:class:`RemoteProtocolError` with the error code to answer with. Each frame's
``wire()`` gives the map to encode. docs/protocol.md is the reference.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final, Literal

import attrs

from .errors import CloseCode, ErrorCode, RemoteProtocolError

PROTOCOL_VERSION: Final = 1
HUB_ID: Final = "$hub"
"""Sender id stamped on messages that the hub itself originates."""

_COMPONENT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@-]{0,127}")
_TOPIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:/@-]{0,255}")
MAX_TYPE_LEN: Final = 128
MAX_REF_LEN: Final = 128
MAX_TOPICS: Final = 1024

Body = dict[str, Any]
"""An application message as it travels: ``type``, ``data`` and addressing."""


@functools.lru_cache(maxsize=4096)
def _valid_id(value: str) -> bool:
    return _COMPONENT_ID.fullmatch(value) is not None


def valid_component_id(value: object) -> bool:
    """True when ``value`` is a legal component id (1-128 chars, no ``$``)."""
    return isinstance(value, str) and _valid_id(value)


@functools.lru_cache(maxsize=4096)
def _valid_topic(value: str) -> bool:
    return _TOPIC.fullmatch(value) is not None


def valid_topic(value: object) -> bool:
    """True when ``value`` is a legal topic name (1-256 chars)."""
    return isinstance(value, str) and _valid_topic(value)


PRESENCE_TOPIC: Final = "$presence"
"""The system topic on which the hub publishes who joins and leaves (docs/api.md)."""
STATS_TOPIC: Final = "$stats"
"""The system topic on which the hub publishes its statistics every second (docs/api.md)."""
SYSTEM_TOPICS: Final = frozenset({PRESENCE_TOPIC, STATS_TOPIC})
"""Topics only the hub publishes to; clients may subscribe to them."""


def valid_subscription(value: object) -> bool:
    """True when ``value`` may be subscribed to: a legal topic name or a system topic."""
    return valid_topic(value) or value in SYSTEM_TOPICS


def _bad(
    message: str, code: ErrorCode = ErrorCode.BAD_FIELD, seq: int | None = None
) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=code, seq=seq)


def _int(obj: dict[str, Any], key: str, *, default: int | None = None, minimum: int = 0) -> int:
    value = obj.get(key, default)
    if type(value) is not int or value < minimum:
        raise _bad(f"field {key!r} must be an integer >= {minimum}")
    return value


MAX_PING_ID: Final = (1 << 53) - 1
"""Ping ids are at most this (what a JavaScript number holds exactly)."""


def _ping_id(obj: dict[str, Any]) -> int:
    value = _int(obj, "id")
    if value > MAX_PING_ID:
        raise _bad(f"field 'id' of a ping or pong must be at most 2**53 - 1, not {value}")
    return value


def _opt_str(obj: dict[str, Any], key: str, limit: int = MAX_REF_LEN) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _bad(f"field {key!r} must be a non-empty string of at most {limit} characters")
    return value


def _topics(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_TOPICS:
        raise _bad(f"field {key!r} must be a list of at most {MAX_TOPICS} topics")
    for topic in value:
        if not valid_subscription(topic):
            raise _bad(f"invalid topic name {topic!r}")
    return tuple(value)


@attrs.frozen
class Hello:
    """Client -> hub, first frame: who I am and where my session stands."""

    id: str | None = None
    sid: str | None = None
    epoch: int = 0
    ack: int = 0
    topics: tuple[str, ...] = ()
    token: str | None = None
    max_size: int | None = None
    """The largest WebSocket message this client accepts (None: 1 MiB)."""
    v: int = PROTOCOL_VERSION

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        out: dict[str, Any] = {"t": "hello", "v": self.v, "id": self.id, "sid": self.sid}
        out.update(epoch=self.epoch, ack=self.ack, topics=list(self.topics))
        if self.token is not None:
            out["token"] = self.token
        if self.max_size is not None:
            out["max_size"] = self.max_size
        return out


@attrs.frozen
class Welcome:
    """Hub -> client, answer to ``hello``: the session and what the hub holds."""

    id: str
    sid: str
    epoch: int
    recovered: bool
    ack: int
    hb: int
    window: int
    max_size: int
    node: str = ""
    v: int = PROTOCOL_VERSION
    reason: str | None = None
    """With ``recovered: false`` after a resume was asked: why (``unknown``, ``epoch``,
    ``truncated``, ``ack``)."""

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        out = {"t": "welcome", **attrs.asdict(self)}
        if self.reason is None:
            del out["reason"]
        return out


@attrs.frozen
class Rejected:
    """Stands in a :class:`MessageFrame` for a client body that failed validation.

    Its sequence number is still consumed (the stream goes on); the hub
    answers it with an error frame naming that number.
    """

    error: RemoteProtocolError


@attrs.frozen
class MessageFrame:
    """``msg`` (one body) or ``batch`` (several) with consecutive sequence numbers."""

    seq: int
    bodies: list[Body | Rejected]
    ack: int | None = None


@attrs.frozen
class Ack:
    """Cumulative acknowledgement: every message up to ``seq`` is safe."""

    seq: int

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        return {"t": "ack", "seq": self.seq}


@attrs.frozen
class Ping:
    """Liveness probe; the peer answers with a ``pong`` carrying the same ``id``."""

    id: int

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        return {"t": "ping", "id": self.id}


@attrs.frozen
class Pong:
    """Answer to ``ping``."""

    id: int

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        return {"t": "pong", "id": self.id}


@attrs.frozen
class Subscribe:
    """Client -> hub: add (``sub``) or remove (``unsub``) topic subscriptions."""

    topics: tuple[str, ...]
    remove: bool = False

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        return {"t": "unsub" if self.remove else "sub", "topics": list(self.topics)}


@attrs.frozen
class Error:
    """An error report; ``seq``/``id`` name the message it concerns, if any."""

    code: str
    msg: str
    seq: int | None = None
    id: str | None = None

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        out: dict[str, Any] = {"t": "error", "code": self.code, "msg": self.msg}
        if self.seq is not None:
            out["seq"] = self.seq
        if self.id is not None:
            out["id"] = self.id
        return out


@attrs.frozen
class Bye:
    """Client -> hub: I am leaving for good; end my session."""

    def wire(self) -> dict[str, Any]:
        """The map to encode."""
        return {"t": "bye"}


Frame = Hello | Welcome | MessageFrame | Ack | Ping | Pong | Subscribe | Error | Bye
Side = Literal["hub", "client"]


def check_body(obj: object, *, from_client: bool) -> Body:
    """Validate one message body; return it (the same dict) when valid.

    Bodies from a client may not carry ``from`` (the hub stamps it).
    """
    if not isinstance(obj, dict):
        raise _bad("a message body must be a map")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > MAX_TYPE_LEN:
        raise _bad(f"field 'type' must be a non-empty string of at most {MAX_TYPE_LEN} characters")
    to = obj.get("to")
    if to is not None and not (valid_component_id(to) or to == HUB_ID):
        raise _bad(f"field 'to' is not a valid component id: {to!r}")
    topic = obj.get("topic")
    if topic is not None and not (
        valid_topic(topic) or (not from_client and topic in SYSTEM_TOPICS)
    ):
        raise _bad(f"field 'topic' is not a valid topic name: {topic!r}")
    if from_client and to is not None and topic is not None:
        raise _bad("a message has 'to' or 'topic', not both")
    common = 1 + ("data" in obj) + (to is not None) + (topic is not None)
    if not from_client:
        common += "from" in obj  # the hub stamps every body it sends: no reason to look further
    if len(obj) > common:  # other fields are present: check them (the common case skips this)
        _opt_str(obj, "id")
        _opt_str(obj, "re")
        error = obj.get("error")
        if error is not None and not (
            isinstance(error, dict) and isinstance(error.get("code"), str)
        ):
            raise _bad("field 'error' must be a map with a string 'code'")
        if from_client and "from" in obj:
            raise _bad("field 'from' is set by the hub, not by clients")
    return obj


def parse_frame(obj: object, *, sender: Side) -> Frame:
    """Validate a decoded frame sent by ``sender`` and return it typed."""
    if not isinstance(obj, dict):
        raise _bad("a frame must be a map with a 't' field", ErrorCode.BAD_FRAME)
    t = obj.get("t")
    from_client = sender == "client"
    if t == "msg" or t == "batch":
        seq = _int(obj, "seq", minimum=1)
        ack = obj.get("ack")
        if ack is not None and (type(ack) is not int or ack < 0):
            raise _bad("field 'ack' must be an integer >= 0", seq=seq)
        m = obj.get("m")
        if t == "msg":
            if not isinstance(m, dict):  # the frame's own field: nothing is consumed
                raise _bad("field 'm' of a msg must be a map (one message body)", seq=seq)
            items = [m]
        elif isinstance(m, list) and m:
            items = m
        else:
            raise _bad("field 'm' of a batch must be a non-empty list", seq=seq)
        bodies: list[Body | Rejected] = []
        for i, item in enumerate(items):
            try:
                bodies.append(check_body(item, from_client=from_client))
            except RemoteProtocolError as exc:
                exc.seq = seq + i
                if not from_client:
                    raise
                bodies.append(Rejected(exc))
        return MessageFrame(seq, bodies, ack)
    if t == "ack":
        return Ack(_int(obj, "seq"))
    if t == "ping":
        return Ping(_ping_id(obj))
    if t == "pong":
        return Pong(_ping_id(obj))
    if t == "error":
        code = obj.get("code")
        msg = obj.get("msg", "")
        if not isinstance(code, str) or not isinstance(msg, str):
            raise _bad("an error frame needs string fields 'code' and 'msg'")
        seq_ref = obj.get("seq")
        return Error(code, msg, seq_ref if type(seq_ref) is int else None, _opt_str(obj, "id"))
    if from_client:
        if t == "hello":
            v = _int(obj, "v", default=PROTOCOL_VERSION)
            if v != PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    f"protocol version {v} is not supported (this hub speaks {PROTOCOL_VERSION})",
                    code=ErrorCode.BAD_FIELD,
                    close_code=CloseCode.UNSUPPORTED_VERSION,
                )
            cid = obj.get("id")
            if cid is not None and not valid_component_id(cid):
                raise _bad(f"field 'id' is not a valid component id: {cid!r}")
            return Hello(
                id=cid,
                sid=_opt_str(obj, "sid"),
                epoch=_int(obj, "epoch", default=0),
                ack=_int(obj, "ack", default=0),
                topics=_topics(obj, "topics"),
                token=_opt_str(obj, "token", limit=8192),
                max_size=_int(obj, "max_size", minimum=1024) if "max_size" in obj else None,
                v=v,
            )
        if t == "sub" or t == "unsub":
            return Subscribe(_topics(obj, "topics"), remove=t == "unsub")
        if t == "bye":
            return Bye()
    elif t == "welcome":
        recovered = obj.get("recovered")
        cid, sid = obj.get("id"), obj.get("sid")
        if not isinstance(recovered, bool) or not isinstance(cid, str) or not isinstance(sid, str):
            raise _bad("welcome needs 'id', 'sid' (strings) and 'recovered' (boolean)")
        node = obj.get("node", "")
        return Welcome(
            id=cid,
            sid=sid,
            epoch=_int(obj, "epoch"),
            recovered=recovered,
            ack=_int(obj, "ack"),
            hb=_int(obj, "hb"),
            window=_int(obj, "window", minimum=1),
            max_size=_int(obj, "max_size", minimum=1),
            node=node if isinstance(node, str) else "",
            v=_int(obj, "v", default=PROTOCOL_VERSION),
            reason=reason if isinstance(reason := obj.get("reason"), str) else None,
        )
    if isinstance(t, str):
        raise _bad(f"unknown frame type {t!r}", ErrorCode.UNKNOWN_FRAME)
    raise _bad("a frame must be a map with a string 't' field", ErrorCode.BAD_FRAME)
