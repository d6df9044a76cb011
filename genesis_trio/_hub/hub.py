"""The hub: ``TranscendentalExternalWebSocket``.

Accepts WebSocket connections (``handle_connection``, mounted at ``/ws``),
performs the hello/welcome handshake, attaches each connection to its session
and runs the per-message pipeline ``_process_message_transcendentally``:
decode, validate, contain errors, route (to a component or a topic's
subscribers), record. Routing appends to the target sessions' outbound logs,
waiting (bounded) for room; the target's writer does the rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
from starlette.websockets import WebSocket

from .._core.coalesce import FanoutWindow
from .._core.codec import Codec
from .._core.config import HubConfig
from .._core.errors import CloseCode, ConnectionClosed, ErrorCode, RemoteProtocolError
from .._core.frames import (
    HUB_ID,
    Ack,
    Body,
    Bye,
    Error,
    Hello,
    Msgs,
    Ping,
    Pong,
    Rejected,
    Subscribe,
    Welcome,
    check_body,
    parse_frame,
    valid_topic,
)
from .._core.message import Message
from .._runtime.supervisor import NO_RESTART, Supervisor
from ..stores._protocol import SessionStore
from .endpoint import Receive, Scope, Send, serve_websocket
from .hypercorn import ServingObserver
from .journal import Journal
from .limits import Admission
from .link import Backlogged, HubConnection, ServerTransport
from .sessions import HubSession, Outgoing, SessionTable
from .stats import HubCounters, HubStatistics, hub_snapshot

log = logging.getLogger("genesis_trio.hub")

HubHandler = Callable[[Message], Awaitable[Any]]
"""A hub-side handler for messages addressed ``to: "$hub"``."""


class TranscendentalExternalWebSocket:
    """The hub endpoint: sessions, routing, delivery guarantees, statistics.

    Mount :meth:`handle_connection` at ``/ws`` of an ASGI app (see
    :func:`genesis_trio.create_app`) and run :meth:`run` in a nursery for
    background housekeeping (session expiry).
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        store: SessionStore | None = None,
        **options: Any,
    ) -> None:
        base = config if config is not None else HubConfig()
        self.config: HubConfig = base if not options else _evolve(base, options)
        self.store = store
        self._journal: Journal | None = None
        if store is not None:
            self._journal = Journal(
                store,
                on_released=self._on_released,
                on_outage=self._on_store_outage,
                outage_after=self.config.store_outage_timeout,
            )
        self._table = SessionTable(self.config, self._journal)
        self._counters = HubCounters()
        self.admission = Admission(
            self.config.max_connections, self.config.max_connections_per_address
        )
        """Live links in all and per client address (see :mod:`._limits`)."""
        self.serving_observer: ServingObserver = self._counters
        """What the serving stack reports to (oversized messages, contained failures)."""
        self._fanout = FanoutWindow()
        self._running = False
        self._handlers: dict[str, HubHandler] = {}
        self._supervisor = Supervisor(
            "hub-connections",
            NO_RESTART,
            cleanup_timeout=self.config.close_timeout,
            on_error=self._connection_crashed,
        )

    def _on_released(self, session: HubSession) -> None:
        """The journal committed: new entries are sendable, received ones acknowledgeable."""
        if session.connection is None:
            return
        inbound = session.inbound
        if inbound.released > inbound.acked and session.ack_deadline == math.inf:
            session.ack_deadline = trio.current_time() + self.config.ack_delay
        session.wake.set()

    def _on_store_outage(self) -> None:
        self.close_all(CloseCode.STORE_UNAVAILABLE, "session store unavailable")

    def _connection_crashed(self, exc: BaseException) -> None:
        self._counters.errors_contained += 1
        log.error("a connection crashed (contained): %r", exc, exc_info=exc)

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

    async def send_message_transcendentally(
        self, component_id: str, message: Message | Mapping[str, Any]
    ) -> bool:
        """Deliver ``message`` from the hub to ``component_id``.

        Returns True once accepted into the component's session (delivered
        exactly once, now or after it resumes), False when no session exists
        for that id. Waits (bounded) while the component's buffer is full.
        """
        body = Message.coerce(message).body()
        body["from"], body["to"] = HUB_ID, component_id
        body.pop("topic", None)
        check_body(body, from_client=False)
        table = self._table
        if component_id not in table.by_id:
            return False

        def resolve() -> Sequence[HubSession]:
            target = table.by_id.get(component_id)
            return (target,) if target is not None else ()

        await self._deliver(resolve, Outgoing(body), _always)
        if self._journal is not None:
            await self._journal.wait_committed()
        return True

    async def publish(self, topic: str, message: Message | Mapping[str, Any]) -> int:
        """Publish from the hub to ``topic``; return the number of subscribers reached."""
        if not valid_topic(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        body = Message.coerce(message).body()
        body["from"], body["topic"] = HUB_ID, topic
        body.pop("to", None)
        check_body(body, from_client=False)
        subscribers = self._table.subscribers
        count = await self._deliver(
            lambda: tuple(subscribers.get(topic, ())), Outgoing(body), _always
        )
        if self._journal is not None:
            await self._journal.wait_committed()
        return count

    def components(self) -> list[dict[str, Any]]:
        """One row per session: id, connected, topics, unacknowledged count."""
        return [
            {
                "component_id": s.component_id,
                "connected": s.connected,
                "topics": sorted(s.topics),
                "pending": len(s.outbound),
                "epoch": s.epoch,
            }
            for s in self._table.by_id.values()
        ]

    def statistics(self) -> HubStatistics:
        """A frozen snapshot of the metrics."""
        return hub_snapshot(self.config.node_id, self._counters, len(self._table), self._journal)

    def get_stats(self) -> dict[str, Any]:
        """The metrics as a plain dict (names documented in docs/metrics.md)."""
        return attrs.asdict(self.statistics())

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "hub shutting down") -> int:
        """Close every live connection (sessions are kept for resume)."""
        closed = 0
        for session in list(self._table.by_id.values()):
            if session.connection is not None:
                session.connection.close_soon(code, reason)
                closed += 1
        return closed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: load and journal the session store, expire sessions.

        With a store, the sessions it holds are loaded before ``started()``;
        a store that cannot be opened raises :class:`StoreError`.
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
        journal = self._journal
        async with trio.open_nursery() as nursery:
            if journal is not None:
                assert self.store is not None
                state = await self.store.open()
                loaded = self._table.load(state, trio.current_time())
                log.info("session store %s: %d sessions loaded", self.store.name, loaded)
                await nursery.start(journal.run)
            self._running = True
            task_status.started()
            try:
                sweeps = 0
                while True:
                    await trio.sleep(interval)
                    expired, dropped = self._table.expire(trio.current_time())
                    self._counters.sessions_expired += expired
                    self._counters.messages_evicted += dropped
                    sweeps += 1
                    if journal is not None and sweeps * interval >= 60.0:
                        sweeps = 0
                        await journal.compact()
            finally:
                self._running = False
                nursery.cancel_scope.cancel()
                if self.store is not None:
                    with trio.CancelScope(shield=True):
                        if journal is not None:
                            with trio.move_on_after(cfg.close_timeout):
                                await journal.wait_committed()
                        await self.store.aclose()

    # -- connection handling ----------------------------------------------------

    async def handle_connection(self, websocket: WebSocket) -> None:
        """The WebSocket endpoint for Starlette (``WebSocketRoute("/ws", hub.handle_connection)``).

        Checks Origin and subprotocol (refusing with HTTP 403/400 and a
        reason), accepts, and serves the link.
        """
        await serve_websocket(self, websocket.scope, websocket.receive, websocket.send)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same endpoint as a raw ASGI app (what :func:`create_app` mounts at ``/ws``)."""
        await serve_websocket(self, scope, receive, send)

    async def serve_transport(self, transport: ServerTransport, codec: Codec) -> None:
        """Serve one accepted link: handshake, attach to its session, run it."""
        cfg = self.config
        c = self._counters
        journal = self._journal
        if journal is not None and not (self._running and journal.healthy):
            c.handshake_failures += 1
            why = "session store unavailable" if self._running else "hub not running"
            await transport.close(CloseCode.STORE_UNAVAILABLE, why)
            return
        hello: Hello | None = None
        with trio.move_on_after(cfg.handshake_timeout):
            data = await transport.receive()
            if data is None:
                c.handshake_failures += 1
                return
            try:
                frame = parse_frame(codec.decode(data), sender="client")
            except RemoteProtocolError as exc:
                c.handshake_failures += 1
                await transport.close(exc.close_code or CloseCode.BAD_HANDSHAKE, str(exc)[:120])
                return
            if not isinstance(frame, Hello):
                c.handshake_failures += 1
                await transport.close(CloseCode.BAD_HANDSHAKE, "the first frame must be hello")
                return
            hello = frame
        if hello is None:
            c.handshake_failures += 1
            await transport.close(CloseCode.HANDSHAKE_TIMEOUT, "no hello in time")
            return
        now = trio.current_time()
        evicted = self._table.make_room(hello, now)
        if evicted is None:
            c.sessions_refused += 1
            await transport.close(CloseCode.TRY_AGAIN_LATER, "the hub is at its session limit")
            return
        c.sessions_evicted += evicted
        opened = self._table.open(hello, now)
        session = opened.session
        if opened.replaced is not None:
            c.replaced_connections += 1
            opened.replaced.close_soon(CloseCode.REPLACED, "replaced by a newer connection")
        if opened.resumed:
            if opened.recovered:
                c.resumes_recovered += 1
            else:
                c.resumes_failed += 1
        connection = HubConnection(self, session, transport, codec, now, hello.max_size or 1 << 20)
        session.connection = connection
        session.disconnected_at = None
        session.inbound.new_link()
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
        )
        if opened.recovered or opened.carried_over:
            c.messages_replayed += session.outbound.unsent
        c.active_connections += 1
        c.connections_total += 1

        async def serve() -> None:
            try:
                await transport.send(codec.encode(welcome.wire()))
                await connection.run()
            except ConnectionClosed:
                connection.peer_closed = True
            except trio.Cancelled:
                if connection.close_code is None:  # the hub is going away, not this link
                    connection.close_code = CloseCode.GOING_AWAY
                    connection.close_reason = "hub shutting down"
                raise
            except Exception:
                connection.crashed = True
                raise

        try:
            await self._supervisor.run(serve, cleanup=connection.cleanup)
        finally:
            c.active_connections -= 1
            code = connection.close_code
            if code is None:
                code = CloseCode.ABNORMAL_CLOSURE if connection.peer_closed else CloseCode.NORMAL
            c.closed(code)

    # -- the per-message pipeline -----------------------------------------------

    async def _process_message_transcendentally(
        self,
        msg: str | bytes,
        component_id: str,
        *,
        connection: HubConnection | None = None,
    ) -> None:
        """Decode, validate, route and record one WebSocket message of ``component_id``.

        Every failure is contained here: the sender gets an error frame (and a
        close code if the link cannot continue); no other connection is harmed.
        """
        conn = connection
        if conn is None:
            session = self._table.by_id.get(component_id)
            conn = session.connection if session is not None else None
            if conn is None:
                raise KeyError(f"no live connection for component {component_id!r}")
        c = self._counters
        try:
            frame = parse_frame(conn.codec.decode(msg), sender="client")
            kind = type(frame)
            if kind is Msgs:
                assert isinstance(frame, Msgs)
                self._admit_frame(conn, frame, len(msg))
            elif kind is Ack:
                assert isinstance(frame, Ack)
                self._apply_ack(conn.session, frame.seq)
            elif kind is Ping:
                assert isinstance(frame, Ping)
                conn.queue_control(conn.codec.encode(Pong(frame.id).wire()))
            elif kind is Pong:
                assert isinstance(frame, Pong)
                rtt = conn.heartbeat.pong(frame.id, trio.current_time())
                if rtt is not None:
                    c.rtt.add(rtt)
            elif kind is Subscribe:
                assert isinstance(frame, Subscribe)
                if frame.remove:
                    self._table.unsubscribe(conn.session, frame.topics)
                else:
                    self._table.subscribe(conn.session, frame.topics)
            elif kind is Bye:
                if conn.backlog:  # after the messages sent before it
                    conn.hold(None, 0, 0)
                else:
                    self._say_bye(conn)
            elif kind is Hello:
                raise RemoteProtocolError("hello was already received on this link")
            elif kind is Error:
                assert isinstance(frame, Error)
                log.info("client %s reported error %s: %s", component_id, frame.code, frame.msg)
        except RemoteProtocolError as exc:
            c.errors_contained += 1
            conn.report(Error(exc.code, str(exc), exc.seq))
            if exc.close_code is not None:
                conn.close_soon(exc.close_code, str(exc)[:120])
            elif conn.count_bad_frame(trio.current_time()):
                conn.close_soon(CloseCode.TOO_MANY_ERRORS, "too many malformed frames")
        except Exception as exc:
            c.errors_contained += 1
            log.exception("contained error while processing a frame from %s", component_id)
            conn.report(
                Error(ErrorCode.INTERNAL, f"internal error (contained): {type(exc).__name__}")
            )

    def _apply_ack(self, session: HubSession, seq: int) -> None:
        if session.outbound.ack(seq, sent_only=True):
            session.room.unpark_all()
            session.wake.set()
            if self._journal is not None:
                self._journal.acked(session)

    def _say_bye(self, conn: HubConnection) -> None:
        self._table.remove(conn.session)
        conn.close_soon(CloseCode.NORMAL, "bye")

    def _admit_frame(self, conn: HubConnection, frame: Msgs, size: int) -> None:
        """Take a ``msg``/``batch``: route it now, or hold it behind those waiting."""
        session = conn.session
        if frame.ack is not None:
            self._apply_ack(session, frame.ack)
        skip = session.inbound.admit(frame.seq, len(frame.bodies), self.config.window)
        if skip:
            self._counters.duplicates_dropped += skip
            if skip == len(frame.bodies):
                return
        if conn.backlog:
            conn.hold(frame, skip, size)
            return
        inbound = session.inbound
        route_now = self._route_now
        bodies = frame.bodies
        seq = frame.seq
        for i in range(skip, len(bodies)):
            body = bodies[i]
            n = seq + i
            if type(body) is Rejected:
                if not self._reject(conn, body, n):
                    return
                continue
            assert not isinstance(body, Rejected)
            if not route_now(conn, body, n):
                conn.hold(frame, i, size)
                break
        self._release(session, inbound.received)

    def _reject(self, conn: HubConnection, body: Rejected, n: int) -> bool:
        """Answer an invalid body (its number is consumed); False if the link must close."""
        error = body.error
        self._counters.errors_contained += 1
        conn.report(Error(error.code, str(error), n))
        conn.session.inbound.processed(n)
        if conn.count_bad_frame(trio.current_time()):
            conn.close_soon(CloseCode.TOO_MANY_ERRORS, "too many malformed frames")
            return False
        return True

    async def _route_rest(self, conn: HubConnection, item: Backlogged) -> bool:
        """Route a held frame's remaining bodies, waiting for room; False if the link ended."""
        frame = item.frame
        assert frame is not None
        session = conn.session
        bodies = frame.bodies
        for i in range(item.next, len(bodies)):
            item.next = i
            body = bodies[i]
            n = frame.seq + i
            if type(body) is Rejected:
                if not self._reject(conn, body, n):
                    return False
                continue
            assert not isinstance(body, Rejected)
            if not self._route_now(conn, body, n) and not await self._route_later(conn, body, n):
                return False
        item.next = len(bodies)
        self._release(session, session.inbound.received)
        return True

    def _release(self, session: HubSession, seq: int) -> None:
        """Everything up to ``seq`` was processed: acknowledge it once it is stored."""
        if self._journal is not None:
            self._journal.touched(session)  # released when the journal commits
            return
        inbound = session.inbound
        inbound.release(seq)
        if inbound.released > inbound.acked:
            if session.ack_deadline == math.inf:
                session.ack_deadline = trio.current_time() + self.config.ack_delay
                session.wake.set()
            elif inbound.released - inbound.acked >= max(1, self.config.window // 2):
                session.wake.set()

    def _route_now(self, conn: HubConnection, body: Body, n: int) -> bool:
        """Route message ``n`` without waiting, if possible (the common case).

        Returns False when it must wait (a full target, or a handler on the
        hub): then :meth:`_route_later` does it. Synchronous, so it costs no
        coroutine per message and is atomic for Trio.
        """
        session = conn.session
        to = body.get("to")
        table = self._table
        targets: Sequence[HubSession]
        if to is not None:
            target = table.by_id.get(to)
            if target is None:
                if to == HUB_ID:
                    return False
                conn.report(
                    Error(
                        ErrorCode.UNKNOWN_TARGET,
                        f"no component {to!r} on this hub",
                        n,
                        body.get("id"),
                    )
                )
                targets = ()
            else:
                targets = (target,)
        else:
            topic = body.get("topic")
            if topic is None:
                conn.report(
                    Error(ErrorCode.NO_TARGET, "a message needs 'to' or 'topic'", n, body.get("id"))
                )
                targets = ()
            else:
                targets = tuple(table.subscribers.get(topic, ()))
        if targets:
            if not self._has_room(targets):
                return False
            body["from"] = session.component_id
            self._append_all(targets, Outgoing(body))
        session.inbound.processed(n)
        self._counters.messages_in += 1
        return True

    async def _route_later(self, conn: HubConnection, body: Body, n: int) -> bool:
        """The slow path of :meth:`_route_now`; False if the link went away meanwhile."""
        session = conn.session
        inbound = session.inbound
        body["from"] = session.component_id
        if body.get("to") == HUB_ID:
            inbound.processed(n)
            self._counters.messages_in += 1
            await self._hub_message(conn, body, n)
            return conn.attached
        if not await self._deliver_waiting(conn, body, Outgoing(body), n):
            return False
        inbound.processed(n)
        self._counters.messages_in += 1
        return True

    async def _deliver_waiting(
        self, conn: HubConnection, body: Body, out: Outgoing, n: int
    ) -> bool:
        """The slow path: a target's log is full; wait (bounded), re-resolving targets."""
        session = conn.session
        inbound = session.inbound
        table = self._table
        to: str | None = body.get("to")
        topic: str = body.get("topic", "")

        def resolve() -> Sequence[HubSession]:
            if to is not None:
                target = table.by_id.get(to)
                return (target,) if target is not None else ()
            return tuple(table.subscribers.get(topic, ()))

        def valid() -> bool:
            return conn.attached and inbound.received == n - 1

        return await self._deliver(resolve, out, valid) >= 0

    async def _deliver(
        self,
        resolve: Callable[[], Sequence[HubSession]],
        out: Outgoing,
        valid: Callable[[], bool],
    ) -> int:
        """Append ``out`` to every target's log, atomically; return the target count.

        Waits while a connected target's log is full; past the slow-consumer
        timeout that target is closed (4004) and receives under retention
        rules instead. Returns -1 if ``valid()`` fails after a wait.
        """
        deadline = math.inf
        while True:
            targets = resolve()
            blocked = next((t for t in targets if self._blocks(t)), None)
            if blocked is None:
                break
            if deadline == math.inf:
                deadline = trio.current_time() + self.config.slow_consumer_timeout
            with trio.move_on_at(deadline) as scope:
                await blocked.room.park()
            if scope.cancelled_caught:
                for target in resolve():
                    if target.connection is not None and self._blocks(target):
                        self._counters.slow_consumers_closed += 1
                        target.connection.close_soon(
                            CloseCode.SLOW_CONSUMER, "buffer full: consumer too slow"
                        )
            if not valid():
                return -1
        if not valid():
            return -1
        self._append_all(targets, out)
        return len(targets)

    @staticmethod
    def _blocks(target: HubSession) -> bool:
        """A connected target whose log is full: wait for it (the sender itself included).

        A client sending to itself waits for its own acknowledgements, which
        its reader handles while the message waits.
        """
        return not target.outbound.has_room and target.connection is not None

    @classmethod
    def _has_room(cls, targets: Sequence[HubSession]) -> bool:
        """True when no target blocks (see :meth:`_blocks`)."""
        return not any(cls._blocks(target) for target in targets)

    def _append_all(
        self, targets: Sequence[HubSession], out: Outgoing, force: HubSession | None = None
    ) -> None:
        """Append ``out`` to every target's log (synchronously: atomic for Trio).

        A connected target with room gets it; one that is away drops its oldest
        messages to make room (retention). ``force`` is appended to even when
        full (a notice that must not wait).
        """
        now = trio.current_time()
        evicted = 0
        journal = self._journal
        if len(targets) > 1:
            self._fanout.appended(len(targets), now)
        size = out.size
        for target in targets:
            log_ = target.outbound
            if target.connection is not None and (log_.has_room or target is force):
                log_.append_unchecked(out, now, size)
                target.wake.set()
                dropped = 0
            else:
                dropped = log_.append_evicting(out, now, size)[1]
                evicted += dropped
            if journal is not None:
                journal.appended(target, log_.last_seq, out, now, len(targets) > 1)
                if dropped:
                    journal.acked(target)
        if evicted:
            self._counters.messages_evicted += evicted

    async def _hub_message(self, conn: HubConnection, body: Body, n: int) -> None:
        """A message addressed to the hub itself: run its handler, contained."""
        session = conn.session
        handler = self._handlers.get(body["type"])
        rid = body.get("id")
        reply: Body | None = None
        if handler is None:
            error = Error(
                ErrorCode.NO_HANDLER, f"the hub has no handler for {body['type']!r}", n, rid
            )
            if rid is None:
                conn.report(error)
            else:
                reply = {
                    "type": body["type"],
                    "re": rid,
                    "error": {"code": error.code, "msg": error.msg},
                }
        else:
            try:
                result = await handler(Message.from_body(body, n))
            except Exception as exc:
                self._counters.errors_contained += 1
                log.exception("hub handler for %r failed (contained)", body["type"])
                msg = f"{type(exc).__name__}: {exc}"[:200]
                if rid is None:
                    conn.report(Error(ErrorCode.HANDLER_ERROR, msg, n))
                else:
                    reply = {
                        "type": body["type"],
                        "re": rid,
                        "error": {"code": "handler_error", "msg": msg},
                    }
            else:
                if rid is not None:
                    reply = {"type": body["type"], "re": rid, "data": result}
        if reply is not None:
            reply["from"] = HUB_ID
            reply["to"] = session.component_id
            table = self._table

            def resolve() -> Sequence[HubSession]:
                live = table.by_sid.get(session.sid)
                return (live,) if live is not None else ()

            await self._deliver(resolve, Outgoing(reply), _always)


def _always() -> bool:
    return True


def _evolve(config: HubConfig, options: Mapping[str, Any]) -> HubConfig:
    return attrs.evolve(config, **options)
