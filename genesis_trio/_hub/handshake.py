"""The hub's side of a new link: ``hello`` in, ``welcome`` out, then run it.

:func:`serve_link` waits (bounded) for the ``hello``, asks the session table
for the session it names (resumed, replaced or new; under ``max_sessions``),
attaches a :class:`HubLink`, answers ``welcome`` and runs the link under the
hub's supervisor (no restart: a failure is contained and the cleanup is
bounded). Every way a handshake can fail has its close code (docs/protocol.md
§2.1) and is counted.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import trio

from .._core.errors import CloseCode, ConnectionClosed, ErrorCode, RemoteProtocolError
from .._core.frames import Error, Hello, Welcome, parse_frame
from .._runtime.logs import LogBudget
from .._runtime.supervisor import Supervisor
from .auth import Authenticator, Authorizer, AuthRefused, AuthRequest, Identity, wall_to_trio
from .endpoint import ServerTransport
from .limits import RateLimiter
from .link import HubLink, LinkServices
from .sessions import SessionTable

log = logging.getLogger("genesis_trio.hub")
_refusals = LogBudget(burst=20)
"""Refused credentials logged per minute (the rest are counted in ``auth_failures``)."""


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

    @property
    def authenticator(self) -> Authenticator | None:
        """Who checks credentials (None: nobody; any client is anyone)."""
        ...

    @property
    def authorizer(self) -> Authorizer | None:
        """Who decides sends, publishes and subscriptions (None: everything is allowed)."""
        ...

    def refusal(self) -> tuple[CloseCode, str] | None:
        """Why new links are refused right now (a failing store), if they are."""
        ...

    @property
    def limiter(self) -> RateLimiter:
        """Makes each new link's rate limits."""
        ...

    @property
    def handshakes(self) -> set[trio.CancelScope]:
        """The scopes of handshakes waiting for their ``hello`` (cancelled at shutdown)."""
        ...

    async def arrive(self, hello: Hello) -> tuple[tuple[CloseCode, str] | None, str | None]:
        """Take the session ``hello`` names from another node, in a cluster.

        Returns why to refuse the link (None: go on) and the id of a new
        anonymous session, if the cluster chose it.
        """
        ...

    async def settle(self, *component_ids: str | None) -> None:
        """In a cluster, let go of claimed ids that did not become sessions here."""
        ...

    async def stored(self) -> None:
        """In a cluster, wait (bounded) until the sessions opened so far are stored:
        other nodes find a component through the store."""
        ...


async def _authenticate(
    host: LinkHost, transport: ServerTransport, hello: Hello
) -> tuple[Hello, Identity] | None:
    """Check the credential and the component id it may use; None after refusing (1008)."""
    authenticator = host.authenticator
    assert authenticator is not None
    token = hello.token or getattr(transport, "bearer", None)
    request = AuthRequest(token, hello.id, getattr(transport, "address", None))
    reason = None
    try:
        with trio.fail_after(host.config.handshake_timeout):  # a user's authenticator too
            identity = await authenticator.authenticate(request)
    except AuthRefused as exc:
        reason = f"authentication failed: {exc}"
    except trio.TooSlowError:
        reason = "authentication failed: no answer in time"
    except Exception as exc:  # contained: an authenticator's bug is not the client's
        log.error("authenticator failed (contained): %s", type(exc).__name__)
        reason = "authentication failed"
    if reason is None:
        cid = hello.id or identity.default_component()
        if cid is None:
            reason = "name the component id (hello.id): this identity owns several"
        elif not identity.may_use(cid):
            reason = f"this identity may not use component id {cid!r}"
        elif host.sessions.owned_elsewhere(cid, hello.sid, identity.subject):
            reason = f"component id {cid!r} belongs to another identity"
        else:
            return attrs.evolve(hello, id=cid, token=None), identity
    host.counters.auth_failures += 1
    dropped = _refusals.take(trio.current_time())
    if dropped is not None:  # an audit trail for operators, bounded (never the credential)
        more = f" [{dropped} more refusals not logged]" if dropped else ""
        log.info("refused %r from %s: %s%s", hello.id, request.address, reason, more)
    await transport.close(CloseCode.POLICY_VIOLATION, reason[:120])
    return None


def _limit_error(refused: tuple[str, ...]) -> Error:
    """The error frame for subscriptions refused by the limits."""
    return Error(
        ErrorCode.LIMIT, f"subscription limit reached: not subscribed to {', '.join(refused)}"[:200]
    )


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
    if not await _serve_link(host, transport):  # ended before its welcome: count that too
        code = transport.sent_code or transport.peer_code or CloseCode.ABNORMAL_CLOSURE
        host.counters.closed(code)


async def _serve_link(host: LinkHost, transport: ServerTransport) -> bool:
    """Handshake and run; False when the link ended before its welcome (not counted).

    The handshake's objects (``hello``, the session table's answer, the
    welcome) die with :func:`_admit`'s frame: this one lives as long as the
    link, so it keeps only what the link needs.
    """
    admitted = await _admit(host, transport)
    if admitted is None:
        return False
    link, subject, welcome = admitted
    del admitted
    c = host.counters

    async def serve() -> None:
        nonlocal welcome
        try:
            frame, welcome = welcome, b""  # not kept for the link's lifetime
            await host.stored()  # addressable from every node once welcomed
            await transport.send(frame)
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
        host.limiter.release(subject)
        c.active_connections -= 1
        code = link.close_code
        if code is None:
            peer = transport.peer_code or CloseCode.ABNORMAL_CLOSURE
            code = peer if link.peer_closed else CloseCode.NORMAL
        c.closed(code)
    return True


async def _admit(
    host: LinkHost, transport: ServerTransport
) -> tuple[HubLink, str | None, bytes] | None:
    """Read ``hello``, authenticate, open the session and attach a new link to it.

    Returns the link, the identity's subject and the encoded welcome; None
    when the link ended before its welcome (the reason was sent).
    """
    cfg = host.config
    c = host.counters
    refusal = host.refusal()
    if refusal is not None:
        c.handshake_failures += 1
        await transport.close(*refusal)
        return None
    waiting = trio.CancelScope()
    host.handshakes.add(waiting)
    try:
        with waiting:
            hello = await _read_hello(host, transport)
    finally:
        host.handshakes.discard(waiting)
    if waiting.cancelled_caught:  # the hub is shutting down
        c.handshake_failures += 1
        await transport.close(*(host.refusal() or (CloseCode.GOING_AWAY, "hub shutting down")))
        return None
    if hello is None:
        return None
    identity: Identity | None = None
    forbidden: tuple[str, ...] = ()
    if host.authenticator is not None:
        checked = await _authenticate(host, transport, hello)
        if checked is None:
            return None
        hello, identity = checked
        authorizer = host.authorizer
        if authorizer is not None:
            forbidden = tuple(t for t in hello.topics if not authorizer.may_subscribe(identity, t))
            if forbidden:
                hello = attrs.evolve(
                    hello, topics=tuple(t for t in hello.topics if t not in forbidden)
                )
    table = host.sessions
    refused, assigned = await host.arrive(hello)
    now = trio.current_time()
    evicted = None
    if refused is not None:
        c.handshake_failures += 1
    elif identity is not None and table.owned_elsewhere(
        hello.id or "", hello.sid, identity.subject
    ):
        c.auth_failures += 1  # now that it is here: whose is it?
        refused = CloseCode.POLICY_VIOLATION, "id belongs to another identity"
    elif (evicted := table.make_room(hello, now)) is None:
        c.sessions_refused += 1
        refused = CloseCode.TRY_AGAIN_LATER, "the hub is at its session limit"
    if refused is not None or evicted is None:
        await host.settle(assigned, hello.id)  # a cluster's claims that made no session
        await transport.close(*(refused or (CloseCode.TRY_AGAIN_LATER, "busy")))
        return None
    c.sessions_evicted += evicted
    opened = table.open(hello, now, identity.subject if identity is not None else None, assigned)
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
    if identity is not None:
        link.identity = identity
        if identity.expires_at is not None:
            link.expires = wall_to_trio(identity.expires_at, now) + cfg.token_grace
    subject = identity.subject if identity is not None else None
    link.limits = host.limiter.acquire(subject)
    if forbidden:
        link.report(
            Error(ErrorCode.FORBIDDEN, f"may not subscribe to {', '.join(forbidden)}"[:200])
        )
        c.forbidden += len(forbidden)
    if opened.refused_topics:
        link.report(_limit_error(opened.refused_topics))
    session.attach(link, now)
    table.joined(session, opened.recovered)
    if assigned is not None and assigned != session.component_id:
        await host.settle(assigned)
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
    encoded = transport.codec.encode(welcome.wire())
    if opened.recovered or opened.carried_over:
        c.messages_replayed += session.outbound.unsent
    c.active_connections += 1  # from here on _serve_link counts the link's end
    c.connections_total += 1
    return link, subject, encoded
