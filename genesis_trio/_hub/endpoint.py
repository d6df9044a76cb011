"""The hub's raw ASGI WebSocket endpoint: upgrade checks and the link's transport.

Raw ASGI on purpose: no framework objects per connection (each idle link
costs memory), and the same code serves :meth:`handle_connection` when a
Starlette app mounts the hub (Starlette's WebSocket speaks ASGI too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from .._core.codec import Codec, negotiate
from .._core.errors import CloseCode, ConnectionClosed
from .hypercorn import current_abort
from .limits import Refusal

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


Abort = Callable[[], Awaitable[None]]


class AsgiTransport:
    """:class:`ServerTransport` over an accepted ASGI WebSocket.

    ``abort`` closes the socket under the server (see ``_hypercorn``); without
    it (an ASGI server other than ours) a peer that stops reading can hold a
    send until the server gives up.
    """

    __slots__ = ("_abort", "_binary", "_closed", "_gone", "_receive", "_send", "codec")

    def __init__(self, receive: Receive, send: Send, codec: Codec, abort: Abort | None) -> None:
        self._receive = receive
        self._send = send
        self.codec = codec
        """The codec the subprotocol selected."""
        self._binary = codec.binary
        self._abort = abort
        self._closed = False
        self._gone = False

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
        for _ in range(2):
            with trio.move_on_after(grace):
                while not self._gone:
                    await self.receive()
                return
            await self.abort()


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
    origin = _header(scope, b"origin")
    if allowed_origins is not None and origin is not None and origin not in allowed_origins:
        refusal = Refusal(403, f"origin {origin!r} is not allowed")
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
    return AsgiTransport(receive, send, codec, current_abort())
