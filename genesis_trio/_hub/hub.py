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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import trio
from starlette.websockets import WebSocket

from .._core.codec import EncodedBody
from .._core.config import HubConfig
from .._core.errors import CloseCode
from .._core.frames import Body, Hello, valid_component_id
from .._core.histogram import Histogram
from .._core.link import Backlogged
from .._core.message import Message
from .._runtime.supervisor import NO_RESTART, Supervisor
from ..stores import SessionStore
from ..stores._cluster import ClusterStore
from .auth import Authenticator, Authorizer, Identity, PatternAuthorizer
from .cluster import ClusterNode
from .endpoint import Receive, Scope, Send
from .gate import Gate
from .hubcalls import HubHandler
from .hypercorn import ServingObserver
from .journal import Journal, NullJournal
from .limits import RateLimiter
from .link import HubLink
from .local import LocalComponent
from .notices import Notices
from .outbox import Outbox
from .pipeline import Pipeline
from .presence import Presence, PresenceEvent
from .queries import Queries
from .requests import HubRequests
from .router import Router
from .sessions import ANONYMOUS_PREFIX, HubSession, SessionTable
from .stats import HubCounters, HubStatistics, hub_snapshot
from .ticker import StatsTicker

log = logging.getLogger("genesis_trio.hub")


class TranscendentalExternalWebSocket(Outbox, Queries):
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
        self.cluster = (
            ClusterNode(store, self.journal, self.sessions, stats=self.get_stats)
            if isinstance(store, ClusterStore) and isinstance(self.journal, Journal)
            else None
        )
        """This hub's part in a cluster (a :class:`~genesis_trio.stores.ClusterStore`)."""
        self._handlers: dict[str, HubHandler] = {}
        cluster = self.cluster
        self.requests = HubRequests(node=None if cluster is None else cluster.store.node)
        """The hub's own requests waiting for replies."""
        on_reply: Callable[[Body], None] = self.requests.resolve
        if cluster is not None:  # replies to other nodes' requests go there
            on_reply = cluster.replies(on_reply)
        self.router = Router(
            self.config,
            self.counters,
            self.sessions,
            self.journal,
            self._handlers,
            authorizer,
            on_reply=on_reply,
            system={"presence": self._presence_request},
        )
        if self.cluster is not None:
            self.router.cluster, self.cluster.drain.router = self.cluster, self.router
            self.cluster.journal.on_refused = self.cluster.refused
        self.notices = Notices(self.counters, self.sessions, self.router.append_all)
        """What clients get in place of messages they cannot receive."""
        self.presence = Presence(
            self.config.node_id, self.sessions, lambda out: self.router.deliver_anywhere(out.body)
        )
        """Join and leave events on ``$presence``, member lists."""
        self.sessions.observer = self.presence
        self.presence.everywhere = self.cluster is not None
        self.ticker = StatsTicker(self.sessions, self.get_stats, self.router.append_all)
        """Statistics on ``$stats`` every second while someone listens."""
        self.fanout = self.router.fanout
        self.pipeline = Pipeline(self.router, self.sessions, self.counters)
        self.supervisor = Supervisor(
            "hub-links",
            NO_RESTART,
            cleanup_timeout=self.config.close_timeout,
            on_error=self._link_crashed,
        )
        self._running = False
        self.gate = Gate(self)
        """Admits, accepts and drains WebSocket connections (the ``/ws`` endpoint)."""
        self.handshakes = self.gate.handshakes
        """Handshakes waiting for their ``hello`` (LinkHost)."""

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
        if self.gate.draining:
            return CloseCode.GOING_AWAY, "hub shutting down"
        if not self.journal.durable:
            return None
        if self.fenced:
            return CloseCode.STORE_UNAVAILABLE, "this node lost its sessions"
        if not self._running:
            return CloseCode.STORE_UNAVAILABLE, "hub not running"
        if not self.journal.healthy:
            return CloseCode.STORE_UNAVAILABLE, "session store unavailable"
        return None

    async def arrive(self, hello: Hello) -> tuple[tuple[CloseCode, str] | None, str | None]:
        """In a cluster, take the session ``hello`` names from another node (LinkHost)."""
        if self.cluster is None:
            return None, None
        return await self.cluster.arrive(hello)

    async def settle(self, *component_ids: str | None) -> None:
        """In a cluster, let go of claimed ids that did not become sessions (LinkHost)."""
        if self.cluster is not None:
            await self.cluster.settle(*component_ids)

    async def stored(self) -> None:
        """In a cluster, wait until new sessions are stored, at most a handshake timeout
        (LinkHost): a message from another node must find a welcomed component."""
        if self.cluster is not None:
            with trio.move_on_after(self.config.handshake_timeout):
                await self.journal.wait_committed()

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
            return self.notices.too_large(link, out, problem)
        return self.notices.not_representable(link, out, problem)

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

    def local(self, component_id: str, *, topics: Iterable[str] = ()) -> LocalComponent:
        """An in-process component attached to a session of this hub (see :class:`LocalComponent`).

        ``async with hub.local("svc") as svc`` (the hub must be running).
        """
        if not valid_component_id(component_id) or component_id.startswith(ANONYMOUS_PREFIX):
            raise ValueError(f"invalid component id {component_id!r} (anon-: the hub's own)")
        return LocalComponent(self, component_id, topics=tuple(topics))

    def _presence_request(self, identity: Identity | None, message: Message) -> Any:
        """The built-in ``presence`` request: the members of ``data.topic`` (one page)."""
        data = message.data
        if not isinstance(data, Mapping) or not isinstance(data.get("topic"), str):
            raise ValueError("a presence request's data is {topic, after?}")
        topic: str = data["topic"]
        authorizer = self.authorizer
        if (
            identity is not None
            and authorizer is not None
            and not authorizer.may_subscribe(identity, topic)
        ):
            raise PermissionError(f"may not see the members of {topic!r}")
        return self.presence.members(topic, data.get("after"))

    @property
    def fenced(self) -> bool:
        """True once another node took a session this one held (a cluster): it stops."""
        cluster = self.cluster
        return cluster is not None and (cluster.fenced or cluster.journal.fenced is not None)

    @property
    def ready(self) -> bool:
        """True while the hub accepts links: running, its store healthy, not draining."""
        return self.refusal() is None and (self._running or not self.journal.durable)

    def statistics(self) -> HubStatistics:
        """A frozen snapshot of the metrics."""
        presence = self.presence
        return hub_snapshot(
            self.config.node_id,
            self.counters,
            len(self.sessions),
            self.journal.status(),
            presence_events=presence.published,
            presence_dropped=presence.dropped,
            late_replies=self.requests.late_replies,
            retained_bytes=self.router.budget.retained,
        )

    def histograms(self) -> dict[str, Histogram]:
        """The distributions behind ``/metrics`` by metric name (live objects: read only)."""
        c, j = self.counters, self.journal.counters
        return {
            "delivery_latency_seconds": c.delivery_seconds,
            "delivery_frame_messages": c.frame_messages,
            "heartbeat_rtt_seconds": c.rtt_seconds,
            "store_commit_seconds": j.commit_seconds,
            "store_commit_rows": j.commit_rows,
        }

    async def cluster_statistics(self) -> dict[str, Any] | None:
        """Each node's statistics and their sums, in a cluster (None: this hub is alone)."""
        return None if self.cluster is None else await self.cluster.cluster_stats()

    def get_stats(self) -> dict[str, Any]:
        """The metrics as a plain dict (names documented in docs/metrics.md)."""
        return attrs.asdict(self.statistics())

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "hub shutting down") -> int:
        """Close every live link (sessions are kept for resume); return how many."""
        closed = 0
        for session in list(self.sessions.by_id.values()):
            link = session.connection
            if isinstance(link, HubLink):  # local components stay (no socket to lose)
                link.close_soon(code, reason)
                closed += 1
        return closed

    def drain(self) -> int:
        """Begin shutting down: close every link with 1001, refuse new ones; return how many.

        Handshakes still waiting for their ``hello`` are closed with 1001 too.
        Each link closes within ``close_timeout``; sessions are kept for resume.
        """
        self.gate.end_handshakes(self.config.close_timeout)
        return self.close_all(CloseCode.GOING_AWAY, "hub shutting down")

    def abort_all(self) -> int:
        """Drop every link's socket at once, with no close handshake; return how many.

        For a shutdown that must not wait (a second signal). Sessions are kept.
        """
        self.gate.end_handshakes(0.0)
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
            if self.cluster is not None:
                await nursery.start(self.cluster.run)
            await nursery.start(self.presence.run)
            await nursery.start(self.ticker.run)
            self.presence.emit(PresenceEvent.STARTED)
            self._running = True
            task_status.started()
            try:
                sweeps = 0
                while True:
                    await trio.sleep(interval)
                    expired, dropped = self.sessions.expire(trio.current_time())
                    self.counters.sessions_expired += expired
                    self.counters.messages_evicted += dropped + self.router.budget.check()
                    sweeps += 1
                    if sweeps * interval >= 60.0:
                        sweeps = 0
                        await journal.compact()
            finally:
                self._running = False
                if self.fenced:  # its clients resume on another node
                    self.close_all(CloseCode.STORE_UNAVAILABLE, "this node lost its sessions")
                nursery.cancel_scope.cancel()
                self.presence.flush(self.router.append_all)  # before the last commit
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
        await self.gate.asgi(scope, receive, send)

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
