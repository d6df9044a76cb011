"""The client's WebSocket transport: wsproto over any Trio stream.

Not trio-websocket, because the resilient client needs two things it lacks
(DEPENDENCIES.md): permessage-deflate with a decompression limit, and a
reader that never stops answering pings while the application is slow. This
transport has no tasks of its own: the caller's reader task drives
:meth:`ClientTransport.receive_some`, which returns every message that
has arrived (a list, so bursts cost one call) and answers pings inline.
"""

from __future__ import annotations

import contextlib
import ssl
import ssl as _ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from .._core.deflate import BoundedPerMessageDeflate
from .._core.errors import CloseCode, ConnectionClosed, HandshakeError

StreamFactory = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""Opens the byte stream to ``(host, port)``; tests pass in-memory streams."""

RECEIVE_SIZE = 1 << 16

LINK_LOST: tuple[type[BaseException], ...] = (
    trio.BrokenResourceError,  # reset, broken pipe
    trio.ClosedResourceError,  # closed under us (by aclose, or another task)
    trio.BusyResourceError,  # a second sender raced a close
    OSError,  # socket errors trio did not translate
    WsLocalProtocolError,  # wsproto: the connection is already closing
)
"""Everything that, raised by the stream or wsproto, means "this link is gone".

The one table of exceptions translated at this boundary into
:class:`ConnectionClosed` (1006); nothing else leaves the transport.
"""


@contextlib.contextmanager
def link_errors(reason: str) -> Iterator[None]:
    """Translate :data:`LINK_LOST` exceptions into ``ConnectionClosed(1006, reason)``."""
    try:
        yield
    except LINK_LOST as exc:
        raise ConnectionClosed(CloseCode.ABNORMAL_CLOSURE, reason) from exc


async def _tcp(host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream(host, port)


class ClientTransport:
    """One client WebSocket. ``send`` is task-safe; one task must drive receiving."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        subprotocol: str | None,
        max_message_size: int,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self.subprotocol = subprotocol
        self._max = max_message_size
        self._send_lock = trio.Lock()
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self._size = 0
        self._closed: ConnectionClosed | None = None
        self._pending: list[str | bytes] = []

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, once it has."""
        return self._closed

    async def _write(self, data: bytes) -> None:
        try:
            with link_errors("connection lost while sending"):
                await self._stream.send_all(data)
        except ConnectionClosed as exc:
            raise self._fail(exc.code, exc.reason) from exc

    def _fail(self, code: int, reason: str) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
        return self._closed

    async def send(self, data: bytes | str) -> None:
        """Send one message (``str`` as text, ``bytes`` as binary)."""
        if self._closed is not None:
            raise self._closed
        async with self._send_lock:
            event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
            try:
                out = self._ws.send(event)
            except WsLocalProtocolError:
                raise self._fail(CloseCode.ABNORMAL_CLOSURE, "connection is closing") from None
            await self._write(out)

    async def receive_some(self) -> list[str | bytes]:
        """Wait for at least one message and return all that are complete.

        Raises :class:`ConnectionClosed` when the link ends (close frame,
        EOF, reset, protocol error or an oversized message).
        """
        while not self._pending:
            if self._closed is not None:
                raise self._closed
            try:
                with link_errors("connection lost"):
                    data = await self._stream.receive_some(RECEIVE_SIZE)
            except ConnectionClosed as exc:
                raise self._fail(exc.code, exc.reason) from None
            if not data:
                raise self._fail(
                    CloseCode.ABNORMAL_CLOSURE, "connection closed without a close frame"
                )
            try:
                self._ws.receive_data(bytes(data))
            except WsRemoteProtocolError as exc:
                raise self._fail(CloseCode.PROTOCOL_ERROR, str(exc)) from None
            await self._process_events()
        out, self._pending = self._pending, []
        return out

    async def _process_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, TextMessage):
                self._size += len(event.data)
                self._text.append(event.data)
                if self._size > self._max:
                    await self._close_quietly(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    raise self._fail(CloseCode.MESSAGE_TOO_BIG, "message from the hub too big")
                if event.message_finished:
                    self._pending.append("".join(self._text))
                    self._text.clear()
                    self._size = 0
            elif isinstance(event, BytesMessage):
                self._size += len(event.data)
                self._bytes.append(bytes(event.data))
                if self._size > self._max:
                    await self._close_quietly(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    raise self._fail(CloseCode.MESSAGE_TOO_BIG, "message from the hub too big")
                if event.message_finished:
                    self._pending.append(b"".join(self._bytes))
                    self._bytes.clear()
                    self._size = 0
            elif isinstance(event, Ping):
                with contextlib.suppress(ConnectionClosed), link_errors("closing"):
                    async with self._send_lock:
                        await self._write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                closed = self._fail(event.code, event.reason or "")  # first: the peer's code wins
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(ConnectionClosed), link_errors("closing"):
                        async with self._send_lock:
                            await self._stream.send_all(self._ws.send(event.response()))
                if not self._pending:
                    raise closed
                return

    async def _close_quietly(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed), link_errors("closing"):
            async with self._send_lock:
                await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame (if still possible) and close the stream. Idempotent, never raises."""
        if self._closed is None and self._ws.state is ConnectionState.OPEN:
            with trio.move_on_after(1.0):
                await self._close_quietly(code, reason)
        self._fail(code, reason)
        await trio.aclose_forcefully(self._stream)

    async def abort(self) -> None:
        """Close the stream at once, without a close frame."""
        self._fail(CloseCode.ABNORMAL_CLOSURE, "aborted")
        await trio.aclose_forcefully(self._stream)


def parse_ws_url(url: str) -> tuple[bool, str, int, str]:
    """Split a ``ws://`` or ``wss://`` URL into (tls, host, port, resource)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return tls, parts.hostname, port, resource


async def connect_websocket(
    url: str,
    subprotocols: Sequence[str],
    *,
    compress: bool = False,
    max_message_size: int = 1 << 20,
    headers: Sequence[tuple[str, str]] = (),
    stream_factory: StreamFactory | None = None,
    ssl_context: _ssl.SSLContext | None = None,
) -> ClientTransport:
    """Open the stream and perform the WebSocket upgrade.

    Raises :class:`HandshakeError` for refused or malformed upgrades and
    ``OSError`` when the TCP connection cannot be made. The caller bounds
    the time (``trio.fail_after``).
    """
    tls, host, port, resource = parse_ws_url(url)
    stream = await (stream_factory or _tcp)(host, port)
    try:
        if tls and stream_factory is None:
            stream = trio.SSLStream(
                stream, ssl_context or _ssl.create_default_context(), server_hostname=host
            )
        ws = WSConnection(ConnectionType.CLIENT)
        extensions = (
            [BoundedPerMessageDeflate(max_message_size=max_message_size)] if compress else []
        )
        host_header = host if port in (80, 443) else f"{host}:{port}"
        request = Request(
            host=host_header,
            target=resource,
            subprotocols=list(subprotocols),
            extensions=extensions,
            extra_headers=[(k.encode(), v.encode()) for k, v in headers],
        )
        await stream.send_all(ws.send(request))
        reject_body = b""
        status = 0
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise HandshakeError("the server closed the connection during the upgrade")
            try:
                ws.receive_data(bytes(data))
            except WsRemoteProtocolError as exc:
                raise HandshakeError(f"invalid upgrade response: {exc}") from None
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    conn = ClientTransport(stream, ws, event.subprotocol, max_message_size)
                    await conn._process_events()  # frames that arrived with the 101
                    return conn
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeError(f"upgrade refused with HTTP {status}")
                elif isinstance(event, RejectData):
                    reject_body += event.data[:1024]
                    if event.body_finished:
                        text = reject_body.decode(errors="replace").strip()
                        raise HandshakeError(f"upgrade refused with HTTP {status}: {text}")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        why = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
        raise HandshakeError(f"connection lost during the upgrade: {why}") from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
