"""Wire codecs, chosen by WebSocket subprotocol (sans-IO).

Two codecs speak protocol v1: ``genesis.v1.json`` (UTF-8 JSON in text
frames) and ``genesis.v1.msgpack`` (MessagePack in binary frames). Message
bodies are encoded once and spliced into delivery frames as bytes, so a
message fanned out to many subscribers is never re-encoded per subscriber.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

import msgpack
import orjson

from .errors import ErrorCode, RemoteProtocolError
from .frames import Body

JSON_SUBPROTOCOL: Final = "genesis.v1.json"
MSGPACK_SUBPROTOCOL: Final = "genesis.v1.msgpack"


class Codec(Protocol):
    """How frames and message bodies become WebSocket payloads."""

    name: str
    """The codec's short name (``"json"`` or ``"msgpack"``)."""
    subprotocol: str
    """The WebSocket subprotocol that selects this codec."""
    binary: bool
    """True when frames travel as binary WebSocket messages."""

    def encode(self, obj: Any) -> bytes:
        """Encode a frame or a message body."""
        ...

    def decode(self, data: bytes | str) -> Any:
        """Decode one WebSocket message; raise :class:`RemoteProtocolError`."""
        ...

    def frame(self, kind: str, seq: int, bodies: Sequence[bytes], ack: int | None) -> bytes:
        """Assemble a ``msg``/``batch`` frame from pre-encoded bodies."""
        ...

    def overhead(self, seq: int, ack: int | None, count: int) -> int:
        """Exactly how many bytes :meth:`frame` adds around ``count`` bodies.

        ``count == 1`` is a ``msg`` frame, more a ``batch``; never less for a
        larger ``count``.
        """
        ...


_join = b"".join


class JsonCodec:
    """JSON (orjson) in text frames."""

    name = "json"
    subprotocol = JSON_SUBPROTOCOL
    binary = False

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON, in a ``bytes`` of its own size.

        orjson (3.12 and later) returns its whole output buffer, at least
        4 KiB even for a 60-byte body; encoded bodies are retained in
        outbound logs until acknowledged, so the copy (~90 ns) saves ~4 KiB
        per retained message.
        """
        return _join((orjson.dumps(obj), b""))

    def decode(self, data: bytes | str) -> Any:
        """Decode JSON text; malformed input raises ``bad_frame``."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(
                f"frame is not valid JSON: {exc}", code=ErrorCode.BAD_FRAME
            ) from None

    def frame(self, kind: str, seq: int, bodies: Sequence[bytes], ack: int | None) -> bytes:
        """Splice pre-encoded bodies into one frame without re-encoding them."""
        head = b'{"t":"%s","seq":%d' % (kind.encode(), seq)
        if ack is not None:
            head += b',"ack":%d' % ack
        if kind == "msg":
            return head + b',"m":' + bodies[0] + b"}"
        return head + b',"m":[' + b",".join(bodies) + b"]}"

    def overhead(self, seq: int, ack: int | None, count: int) -> int:
        """Bytes around the bodies: ``{"t":"msg","seq":N[,"ack":A],"m":`` ... ``}``."""
        size = 14 + len(str(seq))  # {"t":"","seq":
        if ack is not None:
            size += 7 + len(str(ack))  # ,"ack":
        if count == 1:
            return size + 3 + 5 + 1  # msg ,"m": }
        return size + 5 + 6 + count - 1 + 2  # batch ,"m":[ commas ]}


def _mp_array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _mp_int_size(n: int) -> int:
    """Bytes MessagePack takes for a non-negative integer."""
    if n < 0x80:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


_MP_T = msgpack.packb("t")
_MP_SEQ = msgpack.packb("seq")
_MP_ACK = msgpack.packb("ack")
_MP_M = msgpack.packb("m")
_MP_KIND = {"msg": msgpack.packb("msg"), "batch": msgpack.packb("batch")}


class MsgpackCodec:
    """MessagePack in binary frames."""

    name = "msgpack"
    subprotocol = MSGPACK_SUBPROTOCOL
    binary = True

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` as MessagePack."""
        data: bytes = msgpack.packb(obj, use_bin_type=True)
        return data

    def decode(self, data: bytes | str) -> Any:
        """Decode MessagePack; malformed input raises ``bad_frame``."""
        if isinstance(data, str):
            raise RemoteProtocolError(
                "text frame on the msgpack subprotocol", code=ErrorCode.BAD_FRAME
            )
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise RemoteProtocolError(
                f"frame is not valid MessagePack: {type(exc).__name__}",
                code=ErrorCode.BAD_FRAME,
            ) from None

    def frame(self, kind: str, seq: int, bodies: Sequence[bytes], ack: int | None) -> bytes:
        """Splice pre-encoded bodies into one frame without re-encoding them."""
        parts = [bytes((0x80 | (3 if ack is None else 4),)), _MP_T, _MP_KIND[kind]]
        parts += [_MP_SEQ, msgpack.packb(seq)]
        if ack is not None:
            parts += [_MP_ACK, msgpack.packb(ack)]
        parts.append(_MP_M)
        if kind == "msg":
            parts.append(bodies[0])
        else:
            parts.append(_mp_array_header(len(bodies)))
            parts.extend(bodies)
        return b"".join(parts)

    def overhead(self, seq: int, ack: int | None, count: int) -> int:
        """Bytes around the bodies: the map, its keys, the numbers, the array header."""
        size = 1 + len(_MP_T) + len(_MP_SEQ) + _mp_int_size(seq) + len(_MP_M)
        if ack is not None:
            size += len(_MP_ACK) + _mp_int_size(ack)
        if count == 1:
            return size + len(_MP_KIND["msg"])
        return size + len(_MP_KIND["batch"]) + len(_mp_array_header(count))


JSON: Final = JsonCodec()
MSGPACK: Final = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
CODECS_BY_NAME: Final[dict[str, Codec]] = {JSON.name: JSON, MSGPACK.name: MSGPACK}


class EncodedBody:
    """A message body, encoded at most once per codec however many receive it.

    The hub keeps one per message, shared by every session it is routed to:
    a message fanned out to many subscribers is encoded once per codec.
    """

    __slots__ = ("_body", "_size", "json", "msg_id", "msgpack")

    def __init__(self, body: Body | None, *, msgpack: bytes | None = None) -> None:
        self._body = body
        self.json: bytes | None = None
        self.msgpack: bytes | None = msgpack
        self.msg_id: int | None = None
        """The id under which the session store keeps the body (once stored)."""
        self._size = -1

    @classmethod
    def stored(cls, msg_id: int, msgpack: bytes) -> EncodedBody:
        """A body loaded from the session store (decoded only if a JSON client needs it)."""
        out = cls(None, msgpack=msgpack)
        out.msg_id = msg_id
        return out

    @property
    def body(self) -> Body:
        """The body as a map."""
        if self._body is None:
            assert self.msgpack is not None
            self._body = MSGPACK.decode(self.msgpack)
        return self._body

    @property
    def size(self) -> int:
        """Its encoded size in bytes, of the first encoding made (computed once).

        MessagePack if the store (or a MessagePack client) made it first, else
        JSON, the default codec: a hub without a store whose clients speak
        JSON never encodes MessagePack at all (it cost 5.6 % of such a hub's
        CPU just to measure messages). Bodies JSON cannot carry are measured
        in MessagePack.
        """
        if self._size < 0:
            cached = self.msgpack if self.msgpack is not None else self.json
            if cached is None:
                try:
                    cached = self.encoded(JSON)
                except TypeError:  # bytes, say: MessagePack carries them
                    cached = self.encoded(MSGPACK)
            self._size = len(cached)
        return self._size

    def compact(self) -> None:
        """Keep the body as MessagePack only, decoded again when needed: a body that
        waits for an absent receiver costs its encoded size, not its decoded form,
        which can be ~25 times larger (``[[], [], ...]``). Kept decoded when
        MessagePack cannot carry it."""
        if self._body is None:
            return
        if self.msgpack is None:
            try:
                self.msgpack = MSGPACK.encode(self._body)
            except (TypeError, ValueError, OverflowError):
                return
        self.size  # noqa: B018 - measured before the decoded form goes
        self._body = None

    def encoded(self, codec: Codec) -> bytes:
        """The body in ``codec``'s encoding (cached)."""
        if codec.name == "json":
            if self.json is None:
                self.json = codec.encode(self.body)
            return self.json
        if self.msgpack is None:
            self.msgpack = codec.encode(self.body)
        return self.msgpack


def negotiate(offered: Sequence[str]) -> Codec | None:
    """Pick the codec for the first supported subprotocol the client offered.

    No offer at all selects JSON (handy with generic tools such as wscat);
    offers that name no supported subprotocol select nothing (``None``).
    """
    if not offered:
        return JSON
    for name in offered:
        codec = CODECS.get(name.strip())
        if codec is not None:
            return codec
    return None
