"""Hypercorn's Trio worker, hardened for long-lived WebSocket links.

:func:`guard_hypercorn` (idempotent, process-wide) makes every Hypercorn
Trio connection started afterwards:

* negotiate permessage-deflate with a hard limit on the inflated size
  (:class:`~genesis_trio._deflate.BoundedPerMessageDeflate`) and report
  every oversized message to the hub;
* run as a :class:`GuardedTCPServer`, which

  - contains any exception raised in one connection's tasks (logged and
    counted): Hypercorn runs connections in the listener's nursery, so one
    escaping exception ends the whole server;
  - sends EOF under Hypercorn's send lock (see :meth:`GuardedTCPServer._close`);
  - can be aborted from outside (:meth:`GuardedTCPServer.abort`): Hypercorn
    shields ``send_all``, so a writer blocked on a peer that stopped reading
    can be freed only by closing the socket;
  - releases its zlib state when it ends, so a closed deflate link costs no
    memory even when the cyclic collector runs rarely (``tune_gc``);
* explain the HTTP errors Hypercorn answers itself, before any app runs (a
  request that is not HTTP/1.1: 400; a head over ``h11_max_incomplete_size``:
  431), with a problem document instead of an empty body.

The hub reaches the current connection through :data:`current_connection`
(set in the connection's task, inherited by the ASGI app's task).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, Final, Protocol

import trio
from hypercorn.trio.tcp_server import TCPServer

from .._core.deflate import BoundedPerMessageDeflate, inflate_limit, release_extensions
from .._runtime.logs import budget_tracebacks

log = logging.getLogger("genesis_trio.serve")


class ServingObserver(Protocol):
    """What the serving stack reports to the hub (counted in its statistics)."""

    def message_too_large(self) -> None:
        """Hypercorn closed a link with 1009 (a message over the size limit)."""
        ...

    def connection_failed(self, exc: BaseException) -> None:
        """One connection's tasks raised; the failure was contained."""
        ...


observer: contextvars.ContextVar[ServingObserver | None] = contextvars.ContextVar(
    "genesis_trio_serving_observer", default=None
)
"""The observer of connections started in this context (``serve_hub`` sets it)."""

current_connection: contextvars.ContextVar[GuardedTCPServer | None] = contextvars.ContextVar(
    "genesis_trio_current_connection", default=None
)
"""The connection whose tasks are running (None outside a guarded server)."""
deflate_offers: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "genesis_trio_deflate_offers", default=True
)
"""Whether connections started in this context accept permessage-deflate."""


class GuardedTCPServer(TCPServer):
    """Hypercorn's per-connection server, hardened (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aborted = False
        self.extensions: list[BoundedPerMessageDeflate] = []
        """Deflate extensions negotiated on this connection (released at its end)."""

    async def run(self) -> None:
        """Serve the connection; no exception of it ever reaches the listener."""
        current_connection.set(self)
        watcher = observer.get()
        try:
            await super().run()
        except Exception as exc:
            # Upstream, this would end serve_listeners' nursery and the process.
            if watcher is not None:
                watcher.connection_failed(exc)
            log.warning("a connection failed in the server (contained): %r", exc, exc_info=exc)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
        finally:
            release_extensions(self.extensions)
            self.extensions.clear()
            self.__dict__.pop("protocol", None)  # break the connection's reference cycles early

    async def _close(self) -> None:
        """Send EOF while no other task sends, then close.

        Upstream ``_close`` calls ``send_eof`` without the send lock, and
        ``SocketStream.send_eof`` checkpoints inside its conflict detector.
        When the peer's close frame arrives at that moment, the reading task
        answers it with ``send_all`` and gets ``BusyResourceError`` (which
        escapes the connection). Minimal reproduction: 16 concurrent clients
        looping hello -> bye -> close frame -> TCP close against
        ``genesis-trio serve``; the process died within seconds (Hypercorn
        0.18.0, Trio 0.35.0). Here EOF is sent only when the lock is free
        (not held by the task calling us, nor by a writer still blocked);
        otherwise the socket is just closed, which the peer sees as EOF too.
        """
        if not self.send_lock.locked():
            try:
                async with self.send_lock:
                    await self.stream.send_eof()
            except (
                trio.BrokenResourceError,
                trio.BusyResourceError,
                trio.ClosedResourceError,
                AttributeError,  # an SSL stream has no send_eof
            ):
                pass
        await self.stream.aclose()

    async def abort(self) -> None:
        """Close the socket now: a send blocked on the peer fails at once. Idempotent."""
        if self.aborted:
            await trio.lowlevel.checkpoint()
            return
        self.aborted = True
        stream = self.stream
        transport = getattr(stream, "transport_stream", stream)  # under TLS, the raw socket
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(transport)


@contextlib.contextmanager
def serving_context(
    max_message_size: int, watcher: ServingObserver, *, deflate: bool = True
) -> Iterator[None]:
    """Connections started (tasks spawned) inside this block serve with these settings
    (``deflate``: accept permessage-deflate when a client offers it)."""
    guard_hypercorn()
    limit = inflate_limit.set(max_message_size)
    watching = observer.set(watcher)
    deflating = deflate_offers.set(deflate)
    try:
        yield
    finally:
        deflate_offers.reset(deflating)
        observer.reset(watching)
        inflate_limit.reset(limit)


def current_abort() -> Any:
    """The abort function of the running connection, or None outside a guarded server."""
    conn = current_connection.get()
    return conn.abort if conn is not None else None


def _counting_buffer_class() -> type:
    from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer

    class CountingWebsocketBuffer(WebsocketBuffer):
        """Hypercorn's message buffer, reporting oversized messages to the hub."""

        def __init__(self, max_length: int) -> None:
            super().__init__(max_length)
            self._observer = observer.get()

        def extend(self, event: Any) -> None:
            try:
                super().extend(event)
            except FrameTooLargeError:
                if self._observer is not None:
                    self._observer.message_too_large()
                raise

    return CountingWebsocketBuffer


def _tracking_deflate_class() -> type:
    class TrackedPerMessageDeflate(BoundedPerMessageDeflate):
        """The bounded extension, registered with its connection to be released at its end."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            conn = current_connection.get()
            if conn is not None:
                conn.extensions.append(self)

        def accept(self, offer: Any) -> Any:
            """Negotiate (or not, with ``compression="off"``: the link goes uncompressed)."""
            if not deflate_offers.get():
                return None
            return super().accept(offer)

    return TrackedPerMessageDeflate


HTTP_ERRORS: Final = {
    400: "the request is not valid HTTP/1.1",
    431: "the request line and headers exceed {limit} bytes",
}
"""What Hypercorn's own error answers say (``{limit}``: its ``h11_max_incomplete_size``)."""


def _explaining_h11_class() -> type:
    import h11
    from hypercorn.protocol.h11 import H11Protocol

    class ExplainingH11Protocol(H11Protocol):
        """Hypercorn's HTTP/1.1 protocol whose own errors carry a problem document."""

        async def _send_error_response(self, status_code: int) -> None:
            title = HTTPStatus(status_code).phrase
            detail = HTTP_ERRORS.get(status_code, f"{title.lower()} (HTTP/1.1)")
            detail = detail.format(limit=self.config.h11_max_incomplete_size)
            body = json.dumps({"title": title, "status": status_code, "detail": detail}).encode()
            headers = [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *self.config.response_headers("h11"),
            ]
            await self._send_h11_event(
                h11.Response(status_code=status_code, headers=headers, reason=title.encode())
            )
            await self._send_h11_event(h11.Data(data=body))
            await self._send_h11_event(h11.EndOfMessage())

    return ExplainingH11Protocol


def guard_hypercorn() -> None:
    """Install the hardening described in the module docstring (idempotent)."""
    from hypercorn import protocol
    from hypercorn.protocol import ws_stream
    from hypercorn.trio import run

    if getattr(ws_stream, "_genesis_guarded", False):
        return
    budget_tracebacks("hypercorn.error", log.name)  # tracebacks a client can provoke
    setattr(ws_stream, "PerMessageDeflate", _tracking_deflate_class())  # noqa: B010
    setattr(ws_stream, "WebsocketBuffer", _counting_buffer_class())  # noqa: B010
    setattr(run, "TCPServer", GuardedTCPServer)  # noqa: B010
    setattr(protocol, "H11Protocol", _explaining_h11_class())  # noqa: B010
    setattr(ws_stream, "_genesis_guarded", True)  # noqa: B010
