"""The hub's side of a new link: ``hello`` in, ``welcome`` out, then run it.

:func:`serve_link` waits (bounded) for the ``hello``, asks the session table
for the session it names (resumed, replaced or new; under ``max_sessions``),
attaches a :class:`HubLink`, answers ``welcome`` and runs the link under the
hub's supervisor (no restart: a failure is contained and the cleanup is
bounded). Every way a handshake can fail has its close code (docs/protocol.md
§2.1) and is counted.
"""

from __future__ import annotations

from typing import Protocol

import trio

from .._core.errors import CloseCode, ConnectionClosed, RemoteProtocolError
from .._core.frames import Hello, Welcome, parse_frame
from .._runtime.supervisor import Supervisor
from .link import HubLink, LinkServices, ServerTransport
from .sessions import SessionTable


class LinkHost(LinkServices, Protocol):
    """What :func:`serve_link` needs of the hub: a link's services, plus sessions."""

    @property
    def sessions(self) -> SessionTable:
        """The session table."""
        ...

    @property
    def supervisor(self) -> Supervisor:
        """Runs every link: contains failures, bounds cleanups."""
        ...

    def refusal(self) -> tuple[CloseCode, str] | None:
        """Why new links are refused right now (a failing store), if they are."""
        ...


async def _read_hello(host: LinkHost, transport: ServerTransport) -> Hello | None:
    """The ``hello``, or None after answering why there is none (counted)."""
    counters = host.counters
    with trio.move_on_after(host.config.handshake_timeout):
        data = await transport.receive()
        if data is None:
            counters.handshake_failures += 1
            return None
        try:
            frame = parse_frame(transport.codec.decode(data), sender="client")
        except RemoteProtocolError as exc:
            counters.handshake_failures += 1
            await transport.close(exc.close_code or CloseCode.BAD_HANDSHAKE, str(exc)[:120])
            return None
        if not isinstance(frame, Hello):
            counters.handshake_failures += 1
            await transport.close(CloseCode.BAD_HANDSHAKE, "the first frame must be hello")
            return None
        return frame
    counters.handshake_failures += 1
    await transport.close(CloseCode.HANDSHAKE_TIMEOUT, "no hello in time")
    return None


async def serve_link(host: LinkHost, transport: ServerTransport) -> None:
    """Serve one accepted link: handshake, attach to its session, run it, count its end."""
    cfg = host.config
    c = host.counters
    refusal = host.refusal()
    if refusal is not None:
        c.handshake_failures += 1
        await transport.close(*refusal)
        return
    hello = await _read_hello(host, transport)
    if hello is None:
        return
    table = host.sessions
    now = trio.current_time()
    evicted = table.make_room(hello, now)
    if evicted is None:
        c.sessions_refused += 1
        await transport.close(CloseCode.TRY_AGAIN_LATER, "the hub is at its session limit")
        return
    c.sessions_evicted += evicted
    opened = table.open(hello, now)
    session = opened.session
    if opened.replaced is not None:
        c.replaced_connections += 1
        opened.replaced.close_soon(CloseCode.REPLACED, "replaced by a newer connection")
    if opened.resumed:
        if opened.recovered:
            c.resumes_recovered += 1
        else:
            c.resumes_failed += 1
    c.messages_carried_over += opened.carried_over
    link = HubLink(host, session, transport, now, hello.max_size or cfg.max_message_size)
    session.attach(link, now)
    welcome = Welcome(
        id=session.component_id,
        sid=session.sid,
        epoch=session.epoch,
        recovered=opened.recovered,
        ack=session.inbound.released,
        hb=int(cfg.heartbeat_interval * 1000),
        window=cfg.window,
        max_size=cfg.max_message_size,
        node=cfg.node_id,
        reason=None if opened.recovered else opened.reason,
    )
    if opened.recovered or opened.carried_over:
        c.messages_replayed += session.outbound.unsent
    c.active_connections += 1
    c.connections_total += 1

    async def serve() -> None:
        try:
            await transport.send(transport.codec.encode(welcome.wire()))
            await link.run()
        except ConnectionClosed:
            link.peer_closed = True
        except trio.Cancelled:
            if link.close_code is None:  # the hub is going away, not this link
                link.close_code = CloseCode.GOING_AWAY
                link.close_reason = "hub shutting down"
            raise
        except Exception:
            link.crashed = True
            raise

    try:
        await host.supervisor.run(serve, cleanup=link.cleanup)
    finally:
        c.active_connections -= 1
        code = link.close_code
        if code is None:
            code = CloseCode.ABNORMAL_CLOSURE if link.peer_closed else CloseCode.NORMAL
        c.closed(code)
