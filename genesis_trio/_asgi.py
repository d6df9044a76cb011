"""The hub's raw ASGI WebSocket endpoint: handshake checks and the transport.

Raw ASGI on purpose: no framework objects per connection (each idle link
costs memory), and the same code serves :meth:`handle_connection` when a
Starlette app mounts the hub (Starlette's WebSocket speaks ASGI too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ._codec import Codec, negotiate
from ._errors import ConnectionClosed

if TYPE_CHECKING:
    from ._hub import TranscendentalExternalWebSocket

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsgiTransport:
    """:class:`ServerTransport` over an accepted ASGI WebSocket."""

    __slots__ = ("_binary", "_closed", "_receive", "_send")

    def __init__(self, receive: Receive, send: Send, binary: bool) -> None:
        self._receive = receive
        self._send = send
        self._binary = binary
        self._closed = False

    async def receive(self) -> str | bytes | None:
        """Next text/bytes message; None once the client disconnected."""
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                data: str | bytes = text
                return data
            raw: bytes = message.get("bytes") or b""
            return raw
        self._closed = True
        return None

    async def send(self, data: bytes) -> None:
        """Send one frame; raise ConnectionClosed(1006) if the link is gone."""
        if self._closed:
            raise ConnectionClosed(1006, "link gone")
        try:
            if self._binary:
                await self._send({"type": "websocket.send", "bytes": data})
            else:
                await self._send({"type": "websocket.send", "text": data.decode()})
        except (OSError, RuntimeError) as exc:
            self._closed = True
            raise ConnectionClosed(1006, "link gone") from exc

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (ignored when the link is already gone)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, RuntimeError):
            await self._send({"type": "websocket.close", "code": int(code), "reason": reason})


async def deny(scope: Scope, send: Send, status: int, text: str) -> None:
    """Refuse the upgrade with an HTTP status and a text body (or a bare 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": text.encode()})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def serve_websocket(
    hub: TranscendentalExternalWebSocket, scope: Scope, receive: Receive, send: Send
) -> None:
    """Check Origin and subprotocol, accept, and hand the link to the hub."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    counters = hub._counters
    allowed = hub.config.allowed_origins
    origin = _header(scope, b"origin")
    if allowed is not None and origin is not None and origin not in allowed:
        counters.handshake_failures += 1
        await deny(scope, send, 403, f"origin {origin!r} is not allowed")
        return
    offered: list[str] = list(scope.get("subprotocols") or [])
    codec: Codec | None = negotiate(offered)
    if codec is None:
        counters.handshake_failures += 1
        await deny(
            scope, send, 400, "unsupported subprotocol: offer genesis.v1.json or genesis.v1.msgpack"
        )
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if offered:
        accept["subprotocol"] = codec.subprotocol
    await send(accept)
    del message, offered, accept, origin  # not kept alive for the link's lifetime
    await hub.serve_transport(AsgiTransport(receive, send, codec.binary), codec)
