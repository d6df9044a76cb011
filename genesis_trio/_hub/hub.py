"""The hub: ``TranscendentalExternalWebSocket``, a facade over the hub's parts.

It owns the session table (:mod:`.sessions`), the journal (:mod:`.journal`,
a null one without a store), the router (:mod:`.router`) and the links'
supervisor, and offers them to each link through narrow protocols
(:class:`~.handshake.LinkHost`). Its public API: the ASGI endpoint
(``handle_connection``/``asgi``, mounted at ``/ws``), the hub's own sends,
publishes and handlers, statistics, and ``run`` (the store and expiry).
``_process_message_transcendentally`` is the per-message pipeline (the seed's
name): decode, validate, contain errors, act.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio
from starlette.websockets import WebSocket

from .._core.codec import EncodedBody
from .._core.config import HubConfig
from .._core.errors import CloseCode, GenesisError, RemoteProtocolError
from .._core.frames import HUB_ID, check_body, valid_component_id, valid_topic
from .._core.link import Backlogged
from .._core.message import Message
from .._runtime.supervisor import NO_RESTART, Supervisor
from ..stores import SessionStore
from .auth import Authenticator, Authorizer, PatternAuthorizer
from .endpoint import AsgiTransport, Receive, Scope, Send, accept_websocket, client_address, deny
from .handshake import serve_link
from .hypercorn import ServingObserver
from .journal import Journal, NullJournal
from .limits import Admission, RateLimiter
from .link import HubLink
from .pipeline import Pipeline
from .router import HubHandler, Router
from .sessions import HubSession, SessionTable
from .stats import ComponentInfo, HubCounters, HubStatistics, hub_snapshot

log = logging.getLogger("genesis_trio.hub")


class UnknownComponent(GenesisError, LookupError):
    """The hub holds no session for that component id."""


class TranscendentalExternalWebSocket:
    """The hub endpoint: sessions, routing, delivery guarantees, statistics.

    Mount :meth:`handle_connection` at ``/ws`` of an ASGI app (see
    :func:`genesis_trio.create_app`) and run :meth:`run` in a nursery for
    background housekeeping (the session store, session expiry).
    ``store``: where sessions survive a restart (see :mod:`genesis_trio.stores`).
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        store: SessionStore | None = None,
        authenticator: Authenticator | None = None,
        authorizer: Authorizer | None = None,
        **options: Any,
    ) -> None:
        base = config if config is not None else HubConfig()
        self.config: HubConfig = attrs.evolve(base, **options) if options else base
        self.store = store
        self.authenticator = authenticator
        """Who checks credentials at the handshake (None: nobody: any client is anyone)."""
        if authorizer is None and authenticator is not None:
            authorizer = PatternAuthorizer()
        self.authorizer = authorizer
        """Who decides each send, publish and subscription of an identity."""
        cfg = self.config
        self.limiter = RateLimiter(
            link_messages=cfg.rate_messages,
            link_bytes=cfg.rate_bytes,
            identity_messages=cfg.identity_rate_messages,
            identity_bytes=cfg.identity_rate_bytes,
            burst=cfg.rate_burst,
            flood_timeout=cfg.flood_timeout,
        )
        """Makes each link's rate limits (LinkHost)."""
        self.counters = HubCounters()
        """Counters behind :meth:`statistics` (mutable; read them through it)."""
        self.serving_observer: ServingObserver = self.counters
        """What the serving stack reports to (oversized messages, contained failures)."""
        self.journal: Journal | NullJournal = (
            Journal(
                store,
                on_released=self._committed,
                on_outage=self._on_store_outage,
                outage_after=self.config.store_outage_timeout,
                close_timeout=self.config.close_timeout,
            )
            if store is not None
            else NullJournal(on_released=self._released)
        )
        self.sessions = SessionTable(self.config, self.journal)
        self._handlers: dict[str, HubHandler] = {}
        self.router = Router(
            self.config, self.counters, self.sessions, self.journal, self._handlers, authorizer
        )
        self.fanout = self.router.fanout
        self.pipeline = Pipeline(self.router, self.sessions, self.counters)
        self.admission = Admission(
            self.config.max_connections, self.config.max_connections_per_address
        )
        """Live links in all and per client address (see :mod:`.limits`)."""
        self.supervisor = Supervisor(
            "hub-links",
            NO_RESTART,
            cleanup_timeout=self.config.close_timeout,
            on_error=self._link_crashed,
        )
        self._running = False
        self.draining = False
        """True once :meth:`drain` began: new links are refused with 1001."""
        self.handshakes: set[trio.CancelScope] = set()
        """Handshakes waiting for their ``hello`` (LinkHost; cancelled by :meth:`drain`)."""
        self._transports: set[AsgiTransport] = set()

    # -- what links and the journal call -------------------------------------------

    def _committed(self, session: HubSession) -> None:
        """The journal committed: new entries are sendable, received ones acknowledgeable."""
        link = session.connection
        if link is not None:
            link.committed(trio.current_time())

    def _released(self, session: HubSession) -> None:
        """Without a store: received messages are acknowledgeable at once."""
        link = session.connection
        if isinstance(link, HubLink):
            link.released(trio.current_time())

    def _on_store_outage(self) -> None:
        self.close_all(CloseCode.STORE_UNAVAILABLE, "session store unavailable")

    def _link_crashed(self, exc: BaseException) -> None:
        self.counters.errors_contained += 1
        log.error("a link crashed (contained): %r", exc, exc_info=exc)

    def refusal(self) -> tuple[CloseCode, str] | None:
        """Why new links are refused right now, if they are (LinkHost)."""
        if self.draining:
            return CloseCode.GOING_AWAY, "hub shutting down"
        if not self.journal.durable:
            return None
        if not self._running:
            return CloseCode.STORE_UNAVAILABLE, "hub not running"
        if not self.journal.healthy:
            return CloseCode.STORE_UNAVAILABLE, "session store unavailable"
        return None

    def process(self, data: str | bytes, link: HubLink) -> None:
        """The per-frame pipeline for one link (LinkServices)."""
        self.pipeline.process(data, link)

    async def route_held(self, link: HubLink, item: Backlogged) -> bool:
        """Route a held frame (LinkServices; the router does it)."""
        return await self.router.route_held(link, item)

    def say_bye(self, link: HubLink) -> None:
        """End a session on ``bye`` (LinkServices; the router does it)."""
        self.router.say_bye(link)

    def undeliverable(self, link: HubLink, out: EncodedBody, problem: int | Exception) -> bytes:
        """The notice replacing a message the link's client cannot receive (LinkServices)."""
        if isinstance(problem, int):
            return self.router.too_large(link, out, problem)
        return self.router.not_representable(link, out, problem)

    # -- public API -------------------------------------------------------------

    def add_handler(self, type: str, handler: HubHandler) -> None:
        """Handle messages of ``type`` addressed ``to: "$hub"``; requests get the result."""
        self._handlers[type] = handler

    def on(self, type: str) -> Callable[[HubHandler], HubHandler]:
        """Decorator form of :meth:`add_handler`."""

        def register(handler: HubHandler) -> HubHandler:
            self.add_handler(type, handler)
            return handler

        return register

    async def send(self, to: str, type: str, data: Any = None) -> int:
        """Send ``type``/``data`` from the hub (``$hub``) to component ``to``.

        Returns the message's sequence number in that component's session
        once it is stored there (delivered exactly once, now or after it
        resumes); waits (bounded) while its buffer is full. Raises
        :class:`UnknownComponent` when the hub holds no session for ``to``.
        """
        body: dict[str, Any] = {"type": type, "to": to}
        if data is not None:
            body["data"] = data
        return await self._send_body(to, body)

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        """Publish ``type``/``data`` from the hub to ``topic``; return the subscribers reached."""
        if not valid_topic(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        body: dict[str, Any] = {"type": type, "topic": topic, "from": HUB_ID}
        if data is not None:
            body["data"] = data
        _check(body)
        count = await self.router.deliver(self.router.by_topic(topic), EncodedBody(body))
        await self.journal.wait_committed()
        return count

    async def send_message_transcendentally(
        self, component_id: str, message: Message | Mapping[str, Any]
    ) -> bool:
        """Deliver ``message`` from the hub to ``component_id`` (the seed's name for :meth:`send`).

        Returns True once accepted into the component's session (delivered
        exactly once, now or after it resumes), False when no session exists
        for that id. Waits (bounded) while the component's buffer is full.
        """
        body = Message.coerce(message).body()
        body["to"] = component_id
        body.pop("topic", None)
        try:
            await self._send_body(component_id, body)
        except UnknownComponent:
            return False
        return True

    async def _send_body(self, to: str, body: dict[str, Any]) -> int:
        if not valid_component_id(to):
            raise ValueError(f"invalid component id {to!r}")
        body["from"] = HUB_ID
        _check(body)
        target = self.sessions.by_id.get(to)
        if target is None:
            raise UnknownComponent(f"no component {to!r} on this hub")
        if await self.router.deliver(self.router.by_id(to), EncodedBody(body)) == 0:
            raise UnknownComponent(f"component {to!r} left while the message waited")
        seq = self.sessions.by_id[to].outbound.last_seq
        await self.journal.wait_committed()
        return seq

    def components(self) -> list[ComponentInfo]:
        """One frozen row per session (connected or waiting for resume)."""
        return [ComponentInfo.of(session) for session in self.sessions.by_id.values()]

    def statistics(self) -> HubStatistics:
        """A frozen snapshot of the metrics."""
        return hub_snapshot(
            self.config.node_id, self.counters, len(self.sessions), self.journal.status()
        )

    def get_stats(self) -> dict[str, Any]:
        """The metrics as a plain dict (names documented in docs/metrics.md)."""
        return attrs.asdict(self.statistics())

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "hub shutting down") -> int:
        """Close every live link (sessions are kept for resume); return how many."""
        closed = 0
        for session in list(self.sessions.by_id.values()):
            if session.connection is not None:
                session.connection.close_soon(code, reason)
                closed += 1
        return closed

    def drain(self) -> int:
        """Begin shutting down: close every link with 1001, refuse new ones; return how many.

        Handshakes still waiting for their ``hello`` are closed with 1001 too.
        Each link closes within ``close_timeout``; sessions are kept for resume.
        """
        self._end_handshakes(self.config.close_timeout)
        return self.close_all(CloseCode.GOING_AWAY, "hub shutting down")

    def _end_handshakes(self, within: float) -> None:
        self.draining = True
        deadline = trio.current_time() + within
        for transport in self._transports:
            transport.deadline = min(transport.deadline, deadline)
        for scope in list(self.handshakes):
            scope.cancel()

    def abort_all(self) -> int:
        """Drop every link's socket at once, with no close handshake; return how many.

        For a shutdown that must not wait (a second signal). Sessions are kept.
        """
        self._end_handshakes(0.0)
        now = trio.current_time()
        dropped = 0
        for session in list(self.sessions.by_id.values()):
            link = session.connection
            if isinstance(link, HubLink):
                link.transport.deadline = now
                link.close_soon(CloseCode.GOING_AWAY, "hub stopping now")
                dropped += 1
        return dropped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: load and journal the session store, expire sessions.

        With a store, the sessions it holds are loaded before ``started()``;
        a store that cannot be opened raises :class:`~genesis_trio.stores.StoreError`.
        """
        cfg = self.config
        interval = max(
            0.05,
            min(
                30.0,
                cfg.retention_seconds / 4,
                cfg.session_expiry / 4,
                cfg.anonymous_session_expiry / 4,
            ),
        )
        journal = self.journal
        async with trio.open_nursery() as nursery:
            if isinstance(journal, Journal):
                now = trio.current_time()
                loaded = await journal.open(
                    lambda state: self.sessions.load(state, now, journal.trio_time)
                )
                log.info("session store %s: %d sessions loaded", journal.store.name, loaded)
            await nursery.start(journal.run)
            self._running = True
            task_status.started()
            try:
                sweeps = 0
                while True:
                    await trio.sleep(interval)
                    expired, dropped = self.sessions.expire(trio.current_time())
                    self.counters.sessions_expired += expired
                    self.counters.messages_evicted += dropped
                    sweeps += 1
                    if sweeps * interval >= 60.0:
                        sweeps = 0
                        await journal.compact()
            finally:
                self._running = False
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await journal.aclose()

    # -- the endpoint -------------------------------------------------------------

    async def handle_connection(self, websocket: WebSocket) -> None:
        """The WebSocket endpoint for Starlette (``WebSocketRoute("/ws", hub.handle_connection)``).

        Admits (HTTP 503/429 at the connection limits), checks Origin and
        subprotocol (HTTP 403/400, with a reason), accepts, serves the link.
        """
        await self.asgi(websocket.scope, websocket.receive, websocket.send)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same endpoint as a raw ASGI app (what :func:`create_app` mounts at ``/ws``)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        del message
        address = client_address(scope)
        refusal = self.admission.admit(address)
        if refusal is not None:
            self.counters.connections_refused += 1
            await deny(scope, send, refusal)
            return
        try:
            accepted = await accept_websocket(scope, receive, send, self.config.allowed_origins)
            if not isinstance(accepted, AsgiTransport):
                self.counters.handshake_failures += 1
                return
            self._transports.add(accepted)
            try:
                await serve_link(self, accepted)
            finally:
                with trio.CancelScope(shield=True):
                    await accepted.finish(self.config.close_timeout)
                self._transports.discard(accepted)
        finally:
            self.admission.release(address)

    # -- the per-message pipeline -----------------------------------------------

    async def _process_message_transcendentally(
        self,
        msg: str | bytes,
        component_id: str,
        *,
        connection: HubLink | None = None,
    ) -> None:
        """Decode, validate, route and record one WebSocket message of ``component_id``.

        The seed's name for the per-frame pipeline (:class:`.pipeline.Pipeline`):
        never waits for room, contains every failure (the sender gets an error
        frame, and a close code if the link cannot continue).
        """
        link = connection
        if link is None:
            session = self.sessions.by_id.get(component_id)
            found = session.connection if session is not None else None
            if not isinstance(found, HubLink):
                raise KeyError(f"no live link for component {component_id!r}")
            link = found
        self.pipeline.process(msg, link)


def _check(body: dict[str, Any]) -> None:
    """Validate a body the hub's own API builds; a bad one is the caller's ValueError."""
    try:
        check_body(body, from_client=False)
    except RemoteProtocolError as exc:
        raise ValueError(str(exc)) from None
