"""A raw protocol-v1 link for abusive tests: wsproto over a Trio stream, no library client.

Frames are plain dicts; nothing here answers pings or acknowledges unless
the test says so, so a test can be exactly as careless or hostile as it
wants (stop reading, drop the TCP connection mid-way, send garbage).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Sequence
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
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
from wsproto.extensions import PerMessageDeflate

JSON = "genesis.v1.json"


class Refused(Exception):
    """The upgrade was refused with an HTTP status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class RawLink:
    """One WebSocket link driven by hand."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._text: list[str] = []

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        subprotocols: Sequence[str] = (JSON,),
        deflate: bool = False,
        headers: Sequence[tuple[str, str]] = (),
        source: str | None = None,
        rcvbuf: int | None = None,
    ) -> RawLink:
        """Connect to ``127.0.0.1:port`` (from ``source``) and upgrade; :class:`Refused` on HTTP."""
        sock = trio.socket.socket()
        if rcvbuf is not None:  # a small window makes the hub's sends block sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        return await cls.upgrade(
            trio.SocketStream(sock),
            f"127.0.0.1:{port}",
            subprotocols=subprotocols,
            deflate=deflate,
            headers=headers,
        )

    @classmethod
    async def upgrade(
        cls,
        stream: trio.abc.Stream,
        host: str,
        *,
        subprotocols: Sequence[str] = (JSON,),
        deflate: bool = False,
        headers: Sequence[tuple[str, str]] = (),
    ) -> RawLink:
        """Upgrade an open stream (TCP, or an in-memory one from ``MemoryHub.open_stream``)."""
        ws = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host=host,
            target="/ws",
            subprotocols=list(subprotocols),
            extensions=[PerMessageDeflate()] if deflate else [],
            extra_headers=[(k.encode(), v.encode()) for k, v in headers],
        )
        await stream.send_all(ws.send(request))
        status, body = 0, b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                await stream.aclose()
                raise Refused(status, body.decode(errors="replace"))
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return cls(stream, ws)
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        await stream.aclose()
                        raise Refused(status, "")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        await stream.aclose()
                        raise Refused(status, body.decode(errors="replace"))

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame as JSON text."""
        await self.stream.send_all(self.ws.send(TextMessage(json.dumps(frame))))

    def encode(self, frame: dict[str, Any]) -> bytes:
        """The bytes of one frame (to send several in one TCP write)."""
        return self.ws.send(TextMessage(json.dumps(frame)))

    async def hello(self, cid: str | None, **fields: Any) -> dict[str, Any]:
        """Send ``hello`` and return the ``welcome``."""
        await self.send({"t": "hello", "v": 1, "id": cid, **fields})
        return await self.next("welcome")

    async def receive(self) -> dict[str, Any] | None:
        """The next frame (pings answered at the WebSocket level); None once closed."""
        while not self.frames:
            if self.close_code is not None:
                await self.stream.aclose()  # the link is over: release the socket
                return None
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.close_code = self.close_code or 1006
                await self.stream.aclose()
                return None
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        self.frames.append(json.loads("".join(self._text)))
                        self._text.clear()
                elif isinstance(event, BytesMessage):
                    raise AssertionError("binary frame on the JSON subprotocol")
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
        return self.frames.pop(0)

    async def next(self, kind: str) -> dict[str, Any]:
        """The next frame of type ``kind`` (others are skipped)."""
        while True:
            frame = await self.receive()
            if frame is None:
                raise AssertionError(f"link closed ({self.close_code}) while waiting for {kind}")
            if frame.get("t") == kind:
                return frame

    async def delivery(self) -> dict[str, Any]:
        """The next ``msg`` or ``batch`` frame."""
        while True:
            frame = await self.receive()
            if frame is None:
                raise AssertionError(f"link closed ({self.close_code}) while waiting for messages")
            if frame.get("t") in ("msg", "batch"):
                return frame

    async def close(self, code: int = 1000) -> None:
        """Send a close frame, then close the TCP connection at once."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(self.ws.send(CloseConnection(code=code)))
        await self.stream.aclose()

    async def drop(self) -> None:
        """Close the TCP connection without a WebSocket close."""
        await self.stream.aclose()
