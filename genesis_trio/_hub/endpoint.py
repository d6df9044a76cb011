"""The hub's raw ASGI WebSocket endpoint: upgrade checks and the link's transport.

Raw ASGI on purpose: no framework objects per connection (each idle link
costs memory), and the same code serves :meth:`handle_connection` when a
Starlette app mounts the hub (Starlette's WebSocket speaks ASGI too).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from .._core.codec import Codec, negotiate
from .._core.errors import CloseCode, ConnectionClosed
from .hypercorn import current_abort
from .limits import Refusal

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


Abort = Callable[[], Awaitable[None]]


class ServerTransport(Protocol):
    """The hub's view of one accepted WebSocket (ASGI or in-memory)."""

    codec: Codec
    """The codec its subprotocol selected."""
    deadline: float
    """When the link must be gone once it began closing (Trio clock; inf: not closing)."""
    sent_code: int | None
    """The close code this end sent (None: none yet)."""
    peer_code: int | None
    """The close code the server reported for the peer's going (Hypercorn: always 1006)."""

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer has gone."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one encoded frame (text or binary per the codec)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code; never raises."""
        ...

    async def abort(self) -> None:
        """Drop the connection at once, without a close frame; never raises."""
        ...


class AsgiTransport:
    """:class:`ServerTransport` over an accepted ASGI WebSocket.

    ``abort`` closes the socket under the server (see ``_hypercorn``); without
    it (an ASGI server other than ours) a peer that stops reading can hold a
    send until the server gives up.
    """

    __slots__ = (
        "_abort",
        "_binary",
        "_closed",
        "_deadline",
        "_gone",
        "_receive",
        "_send",
        "_waiting",
        "address",
        "bearer",
        "codec",
        "peer_code",
        "sent_code",
    )

    def __init__(self, receive: Receive, send: Send, codec: Codec, abort: Abort | None) -> None:
        self._receive = receive
        self._send = send
        self.codec = codec
        """The codec the subprotocol selected."""
        self._binary = codec.binary
        self._abort = abort
        self.bearer: str | None = None
        """The token of an ``Authorization: Bearer`` upgrade header, if any."""
        self.address: str | None = None
        """The client's address."""
        self._closed = False
        self._gone = False
        self.sent_code: int | None = None
        """The close code this end sent (None: none yet)."""
        self.peer_code: int | None = None
        """The close code the peer's disconnect carried (1006: no close handshake)."""
        self._deadline = math.inf
        self._waiting: trio.CancelScope | None = None

    @property
    def deadline(self) -> float:
        """When the link must be gone once it began closing (inf: not closing).

        Set by the link when it begins closing, and by a shutdown; :meth:`finish`
        keeps within it, even when it is brought forward while finishing.
        """
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = value
        waiting = self._waiting
        if waiting is not None and value < waiting.deadline:
            waiting.deadline = value

    async def receive(self) -> str | bytes | None:
        """Next text/bytes message; None once the client disconnected."""
        if self._gone:
            await trio.lowlevel.checkpoint()
            return None
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                data: str | bytes = text
                return data
            raw: bytes = message.get("bytes") or b""
            return raw
        self._closed = self._gone = True
        self.peer_code = int(message.get("code") or CloseCode.ABNORMAL_CLOSURE)
        return None

    async def send(self, data: bytes) -> None:
        """Send one frame; raise ConnectionClosed(1006) if the link is gone."""
        if self._closed:
            raise ConnectionClosed(CloseCode.ABNORMAL_CLOSURE, "link gone")
        try:
            if self._binary:
                await self._send({"type": "websocket.send", "bytes": data})
            else:
                await self._send({"type": "websocket.send", "text": data.decode()})
        except (OSError, RuntimeError, trio.BusyResourceError) as exc:
            self._closed = True
            raise ConnectionClosed(CloseCode.ABNORMAL_CLOSURE, "link gone") from exc

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (ignored when the link is already gone)."""
        if self._closed:
            return
        self._closed = True
        self.sent_code = code
        with contextlib.suppress(OSError, RuntimeError):
            await self._send({"type": "websocket.close", "code": int(code), "reason": reason})

    async def abort(self) -> None:
        """Drop the connection at once (a send blocked on the peer fails)."""
        self._closed = True
        if self._abort is not None:
            await self._abort()
        else:
            await trio.lowlevel.checkpoint()

    async def finish(self, grace: float) -> None:
        """End the link for good: wait (bounded) for the peer's close, else abort.

        Reading until the disconnect also keeps the server's queue towards us
        drained, so its reading task never blocks on an application that left.
        """
        now = trio.current_time()
        for _ in range(2):
            scope = self._waiting = trio.CancelScope(deadline=min(self._deadline, now + grace))
            try:
                with scope:
                    while not self._gone:
                        await self.receive()
                    return
            finally:
                self._waiting = None
            await self.abort()
            now = trio.current_time()
            grace = min(grace, 1.0)  # after the abort: only the server's disconnect event


async def deny(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Refuse the upgrade with an HTTP status and a text body (or a bare 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": refusal.status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": refusal.reason.encode()})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def client_address(scope: Scope) -> str | None:
    """The peer's address (host only) from an ASGI scope."""
    client = scope.get("client")
    return str(client[0]) if client else None


async def accept_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    allowed_origins: frozenset[str] | None,
) -> AsgiTransport | Refusal:
    """Check Origin and subprotocol, then accept: the link's transport, or why it was refused.

    The ``websocket.connect`` event has been received already; a refusal
    has been answered (HTTP 403/400 with a reason) when this returns.
    """
    origins = [v for k, v in scope.get("headers") or () if k == b"origin"]
    if len(origins) > 1:
        refusal = Refusal(403, "more than one Origin header")
        await deny(scope, send, refusal)
        return refusal
    origin = _header(scope, b"origin")
    if origin is not None and not origin_allowed(origin, allowed_origins, scope):
        refusal = Refusal(403, f"origin {origin[:200]!r} is not allowed")
        await deny(scope, send, refusal)
        return refusal
    offered: list[str] = list(scope.get("subprotocols") or [])
    codec: Codec | None = negotiate(offered)
    if codec is None:
        refusal = Refusal(
            400, "unsupported subprotocol: offer genesis.v1.json or genesis.v1.msgpack"
        )
        await deny(scope, send, refusal)
        return refusal
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if offered:
        accept["subprotocol"] = codec.subprotocol
    await send(accept)
    transport = AsgiTransport(receive, send, codec, current_abort())
    authorization = _header(scope, b"authorization")
    if authorization is not None and authorization[:7].lower() == "bearer ":
        transport.bearer = authorization[7:].strip() or None
    transport.address = client_address(scope)
    return transport


_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _same_origin(origin: str, scope: Scope) -> bool:
    """True when ``origin`` is the hub's own (its host and port, as the browser saw them)."""
    parts = urlsplit(origin)
    host = _header(scope, b"host")
    if not parts.scheme or not parts.hostname or host is None:
        return False
    secure = scope.get("scheme") in ("wss", "https")
    if (parts.scheme == "https") != secure:
        return False
    mine = urlsplit(f"//{host}")
    try:
        port, my_port = parts.port, mine.port
    except ValueError:
        return False
    default = _DEFAULT_PORTS.get(parts.scheme)
    return parts.hostname == (mine.hostname or "") and (port or default) == (my_port or default)


def origin_allowed(origin: str, allowed: frozenset[str] | None, scope: Scope) -> bool:
    """The Origin rule (docs/security.md): the hub's own, or a listed one, or any with ``*``."""
    if allowed is None:
        return _same_origin(origin, scope)
    return "*" in allowed or origin.lower() in allowed or _same_origin(origin, scope)
