"""The resilient client: ``TranscendentalWebSocket``.

One object spans many links. Its session (sequence numbers, retained
outbound messages, inbound dedupe) survives reconnects, so each side's
application sees every message exactly once and in order. Tasks, all owned by
:meth:`run` (or by ``async with``):

* the link supervisor: connect, run one link, back off, reconnect, resume;
* per link, a reader (never blocks on the application: it appends to the
  inbox and answers pings) and a writer (pongs, pings, batched messages,
  acknowledgements, all under the flow-control window);
* the dispatcher: takes inbox messages in order, runs handlers
  (:meth:`process_message`), replies to requests, releases acknowledgements.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import attrs
import trio

from .._core.backoff import CircuitBreaker, backoff
from .._core.coalesce import Coalescer
from .._core.codec import CODECS_BY_NAME
from .._core.config import ClientConfig
from .._core.errors import (
    CloseCode,
    ClosedError,
    ConnectionClosed,
    GenesisError,
    HandshakeError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    SendTimeout,
)
from .._core.frames import (
    Ack,
    Body,
    Bye,
    Error,
    Msgs,
    Ping,
    Pong,
    Rejected,
    Subscribe,
    Welcome,
    check_body,
    parse_frame,
    valid_component_id,
    valid_topic,
)
from .._core.heartbeat import Heartbeat, RttEstimator
from .._core.message import Message
from .._core.session import ClientSession, OutboundLog, fit_frame
from .._runtime.signal import Signal
from .._runtime.supervisor import RestartPolicy, Supervisor
from .transport import StreamFactory, WebSocketConnection, connect_websocket
from .types import (
    FATAL_CLOSE_CODES,
    SUB_PING_BASE,
    ClientStatistics,
    Connected,
    ConnectionState,
    Disconnected,
    Handler,
    Link,
    LinkEvent,
    LinkLost,
    Pending,
)

log = logging.getLogger("genesis_trio.client")


class TranscendentalWebSocket:
    """The resilient client of a genesis_trio hub.

    Use it as ``async with TranscendentalWebSocket(uri, "my-id") as ws:``
    (connects, then runs in the background), or call :meth:`connect` and
    :meth:`run` yourself. Options are the fields of :class:`ClientConfig`.
    """

    def __init__(
        self,
        uri: str,
        component_id: str | None = None,
        *,
        config: ClientConfig | None = None,
        topics: Iterable[str] = (),
        on_link_event: Callable[[LinkEvent], None] | None = None,
        stream_factory: StreamFactory | None = None,
        backoff_factory: Callable[[], Iterable[float]] | None = None,
        **options: Any,
    ) -> None:
        base = config if config is not None else ClientConfig()
        self.config: ClientConfig = attrs.evolve(base, **options) if options else base
        if component_id is None:
            component_id = "py-" + secrets.token_hex(6)
        if not valid_component_id(component_id):
            raise ValueError(f"invalid component id {component_id!r}")
        topics = tuple(topics)
        for topic in topics:
            if not valid_topic(topic):
                raise ValueError(f"invalid topic name {topic!r}")
        self.uri = uri
        self._codec = CODECS_BY_NAME[self.config.codec]
        self._session: ClientSession[bytes] = ClientSession(
            component_id, OutboundLog(capacity=self.config.max_pending), topics=set(topics)
        )
        self._stream_factory = stream_factory
        self._backoff_factory = backoff_factory or (
            lambda: backoff(self.config.backoff_initial, 2.0, self.config.backoff_cap)
        )
        self._listeners: list[Callable[[LinkEvent], None]] = []
        if on_link_event is not None:
            self._listeners.append(on_link_event)
        self._handlers: dict[str, Handler] = {}
        self._default_handler: Handler | None = None
        self._inbox: deque[tuple[int, int, Body]] = deque()
        self._generation = 0  # bumped whenever sequence numbers restart (a new session or epoch)
        self._inbox_wake = Signal()
        self._app_send, self._app_recv = trio.open_memory_channel[Message](self.config.inbox_size)
        self._writer_wake = Signal()
        self._room = trio.lowlevel.ParkingLot()
        self._acked = trio.lowlevel.ParkingLot()
        self._link_lot = trio.lowlevel.ParkingLot()
        self._control: deque[bytes] = deque()
        self._pending: dict[str, Pending] = {}
        self._sub_waiters: dict[int, trio.Event] = {}
        self._ids = itertools.count(1)
        self._sub_ids = itertools.count(SUB_PING_BASE)
        self._link: Link | None = None
        self._ack_deadline = math.inf
        self._state = ConnectionState.IDLE
        self._closed = False
        self._closing = False  # from aclose()'s start: a link ending then means no reconnect
        self._running = False
        self._run_scope: trio.CancelScope | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._breaker = CircuitBreaker(self.config.breaker_threshold, self.config.breaker_reset)
        self._last_rtt = RttEstimator()
        self._c = dict.fromkeys(
            (
                "connects",
                "reconnects",
                "resumes_recovered",
                "resumes_failed",
                "connect_failures",
                "messages_sent",
                "messages_received",
                "messages_replayed",
                "duplicates_dropped",
                "errors_contained",
                "error_frames",
                "frames_sent",
                "messages_framed",
            ),
            0,
        )
        self.last_error: Error | None = None
        """The most recent error frame from the hub not tied to a request."""

    # -- properties ---------------------------------------------------------------

    @property
    def component_id(self) -> str:
        """Our component id (chosen, or generated as ``py-<hex>``)."""
        cid = self._session.component_id
        assert cid is not None
        return cid

    @property
    def state(self) -> str:
        """One of the :class:`ConnectionState` names."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._closed

    @property
    def session_id(self) -> str | None:
        """The hub-issued session id, once connected."""
        return self._session.sid

    @property
    def epoch(self) -> int:
        """The session epoch; it changes when the hub could not resume exactly."""
        return self._session.epoch

    # -- handlers -----------------------------------------------------------------

    def add_handler(self, type: str, handler: Handler) -> None:
        """Call ``handler`` for every message of ``type``; for requests its result is the reply."""
        self._handlers[type] = handler

    def on(self, type: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add_handler`."""

        def register(handler: Handler) -> Handler:
            self.add_handler(type, handler)
            return handler

        return register

    def set_default_handler(self, handler: Handler | None) -> None:
        """Handle types with no handler (None: queue them for :meth:`receive`)."""
        self._default_handler = handler

    def add_link_listener(self, listener: Callable[[LinkEvent], None]) -> None:
        """Call ``listener`` (synchronously) on every :class:`Connected`/:class:`Disconnected`."""
        self._listeners.append(listener)

    # -- sending ------------------------------------------------------------------

    async def send(self, to: str, type: str, data: Any = None) -> int:
        """Send ``type``/``data`` to component ``to``; return the sequence number.

        Returns once the message is in the session's outbound buffer (it will
        be delivered exactly once, across reconnects). Waits while the buffer
        is full, at most ``send_timeout`` (then :class:`SendTimeout`).
        """
        return await self._enqueue({"type": type, "data": data, "to": to})

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        """Publish to every subscriber of ``topic``; return the sequence number."""
        return await self._enqueue({"type": type, "data": data, "topic": topic})

    async def send_message(self, message: Message | Mapping[str, Any]) -> int:
        """Send a full message (a :class:`Message` or a wire-body dict)."""
        return await self._enqueue(Message.coerce(message).body())

    async def request(
        self,
        to: str,
        type: str,
        data: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request deadline is the API
    ) -> Any:
        """Send a request and return the reply's data.

        Raises :class:`RemoteError` if the peer's handler failed or the target
        is unknown, :class:`RequestTimeout` after ``timeout`` seconds
        (default ``request_timeout``).
        """
        rid = f"{self.component_id}.{next(self._ids)}"
        pending = Pending()
        self._pending[rid] = pending
        limit = self.config.request_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                await self._enqueue({"type": type, "data": data, "to": to, "id": rid})
                await pending.event.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"no reply to {type!r} from {to!r} within {limit} s") from None
        finally:
            self._pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def reply(self, request: Message, data: Any = None, *, error: str | None = None) -> int:
        """Answer ``request`` (a message with an ``id``) with ``data`` or an error message."""
        if request.id is None or request.sender is None:
            raise LocalProtocolError("only a received request (with id and sender) can be answered")
        body: Body = {"type": request.type, "to": request.sender, "re": request.id}
        if error is not None:
            body["error"] = {"code": "handler_error", "msg": error}
        else:
            body["data"] = data
        return await self._enqueue(body)

    async def _enqueue(self, body: Body) -> int:
        if self._closed:
            raise ClosedError("the client is closed")
        if body.get("data", 0) is None:
            del body["data"]
        check_body(body, from_client=True)
        payload = self._codec.encode(body)
        limit = self._link.max_size if self._link is not None else self.config.max_message_size
        if len(payload) + 64 > limit:
            raise ValueError(f"message of {len(payload)} bytes exceeds the limit of {limit} bytes")
        out = self._session.outbound
        if len(out) >= out.capacity:
            with trio.move_on_after(self.config.send_timeout):
                while len(out) >= out.capacity and not self._closed:
                    await self._room.park()
            if len(out) >= out.capacity:
                wait = self.config.send_timeout
                raise SendTimeout(f"outbound buffer full ({out.capacity} messages) for {wait} s")
            if self.closed:
                raise ClosedError("the client is closed")
        else:
            await trio.lowlevel.checkpoint()
        seq = out.append(payload, trio.current_time())
        self._c["messages_sent"] += 1
        self._writer_wake.set()
        return seq

    async def flush(self) -> None:
        """Wait until the hub has acknowledged everything sent so far.

        Bound it with ``trio.fail_after`` / ``move_on_after`` as needed.
        """
        out = self._session.outbound
        target = out.last_seq
        epoch = self._session.epoch
        while out.entries and out.entries[0].seq <= target and epoch == self._session.epoch:
            if self._closed:
                raise ClosedError("the client is closed")
            await self._acked.park()
        await trio.lowlevel.checkpoint()

    # -- subscriptions --------------------------------------------------------------

    async def subscribe(self, *topics: str) -> None:
        """Subscribe to ``topics``; returns once the hub applies it (or on the next link)."""
        await self._change_topics(topics, remove=False)

    async def unsubscribe(self, *topics: str) -> None:
        """Drop subscriptions; returns once the hub applies it (or on the next link)."""
        await self._change_topics(topics, remove=True)

    @property
    def topics(self) -> frozenset[str]:
        """Current subscriptions (re-applied on every reconnect)."""
        return frozenset(self._session.topics)

    async def _change_topics(self, topics: tuple[str, ...], *, remove: bool) -> None:
        for topic in topics:
            if not valid_topic(topic):
                raise ValueError(f"invalid topic name {topic!r}")
        current = self._session.topics
        changed = tuple(t for t in topics if (t in current) == remove)
        if remove:
            current.difference_update(changed)
        else:
            current.update(changed)
        link = self._link
        if not changed or link is None:
            await trio.lowlevel.checkpoint()
            return
        done = trio.Event()
        ping_id = next(self._sub_ids)
        self._sub_waiters[ping_id] = done
        self._control.append(self._codec.encode(Subscribe(changed, remove=remove).wire()))
        self._control.append(self._codec.encode(Ping(ping_id).wire()))
        self._writer_wake.set()
        try:
            await done.wait()
        finally:
            self._sub_waiters.pop(ping_id, None)

    # -- receiving ----------------------------------------------------------------

    async def receive(self) -> Message:
        """The next message that no handler took (in order)."""
        try:
            return await self._app_recv.receive()
        except trio.EndOfChannel:
            raise ClosedError("the client is closed") from None

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self._app_recv.receive()
            except trio.EndOfChannel:
                return

    async def process_message(self, message: Message | Mapping[str, Any]) -> Any:
        """Dispatch one message through the handlers and return the handler's result.

        With no handler for its type (and no default handler) the message is
        queued for :meth:`receive` and the result is None.
        """
        return (await self._dispatch(Message.coerce(message)))[1]

    async def _dispatch(self, msg: Message) -> tuple[bool, Any]:
        handler = self._handlers.get(msg.type) or self._default_handler
        if handler is None:
            await self._app_send.send(msg)
            return False, None
        return True, await handler(msg)

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> TranscendentalWebSocket:
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            await self.connect()
        except BaseException:
            nursery.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._exit_stack = stack
        nursery.start_soon(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            stack, self._exit_stack = self._exit_stack, None
            if stack is not None:
                try:
                    await stack.__aexit__(exc_type, exc, tb)
                except BaseExceptionGroup as group:
                    # The hidden nursery holds at most our body's exception and
                    # run()'s failure: raise the one exception, not a group.
                    leaf = _single_leaf(group)
                    if leaf is None:
                        raise
                    raise leaf from None
        return None

    async def connect(self) -> None:
        """Open a link and complete the hello/welcome handshake (one attempt).

        Raises :class:`HandshakeError` (refused upgrade, bad welcome, timeout)
        or ``OSError`` (no TCP connection). No-op while already connected.
        """
        if self._closed:
            raise ClosedError("the client is closed")
        if self._link is not None:
            await trio.lowlevel.checkpoint()
            return
        self._state = ConnectionState.CONNECTING
        try:
            await self._open_link()
        except BaseException:
            self._state = ConnectionState.DISCONNECTED
            raise

    async def _open_link(self) -> None:
        cfg = self.config
        codec = self._codec
        try:
            with trio.fail_after(cfg.connect_timeout):
                conn = await connect_websocket(
                    self.uri,
                    [codec.subprotocol],
                    compress=cfg.compress,
                    max_message_size=cfg.max_message_size,
                    stream_factory=self._stream_factory,
                )
                try:
                    welcome, rest, rtt = await self._handshake(conn)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await conn.abort()
                    raise
        except trio.TooSlowError:
            raise HandshakeError(f"no welcome within {cfg.connect_timeout} s") from None
        except ConnectionClosed as exc:
            raise HandshakeError(f"hub closed the link during the handshake: {exc}") from None
        result = self._session.welcome(welcome)
        if not result.recovered:
            self._generation += 1  # numbering restarted: older inbox entries are not ours to ack
        now = trio.current_time()
        # The hub pings every welcome.hb ms; we ping only when it has been silent
        # for longer than that (half again), so idle links carry half the frames.
        interval = max(cfg.heartbeat_interval, 1.5 * welcome.hb / 1000)
        heartbeat = Heartbeat(
            interval, cfg.heartbeat_floor, cfg.heartbeat_ceiling, now=now, when_silent=True
        )
        heartbeat.rtt = self._last_rtt
        heartbeat.rtt.add(rtt)
        link = Link(conn, heartbeat, welcome.window, welcome.max_size, rest)
        self._link = link
        self._ack_deadline = math.inf
        self._control.clear()
        self._session.inbound.acked = self._session.inbound.released
        c = self._c
        c["connects"] += 1
        if not result.first_connect:
            c["reconnects"] += 1
            c["resumes_recovered" if result.recovered else "resumes_failed"] += 1
        c["messages_replayed"] += 0 if result.first_connect else result.replay
        self._state = ConnectionState.CONNECTED
        self._breaker.success()
        self._link_lot.unpark_all()
        self._acked.unpark_all()  # the welcome may have acknowledged messages
        self._room.unpark_all()
        self._writer_wake.set()
        self._emit(
            Connected(
                welcome.sid, welcome.epoch, result.first_connect, result.recovered, result.replay
            )
        )

    async def _handshake(
        self, conn: WebSocketConnection
    ) -> tuple[Welcome, list[str | bytes], float]:
        codec = self._codec
        if conn.subprotocol not in (None, codec.subprotocol):
            raise HandshakeError(f"hub chose subprotocol {conn.subprotocol!r}")
        started = trio.current_time()
        hello = self._session.hello(self.config.token, self.config.max_message_size)
        await conn.send(self._wire(codec.encode(hello.wire())))
        messages = await conn.receive_some()
        rtt = trio.current_time() - started
        try:
            frame = parse_frame(codec.decode(messages[0]), sender="hub")
        except RemoteProtocolError as exc:
            raise HandshakeError(f"invalid welcome: {exc}") from None
        if isinstance(frame, Error):
            raise HandshakeError(f"hub refused hello: {frame.code}: {frame.msg}")
        if not isinstance(frame, Welcome):
            raise HandshakeError("the hub's first frame was not a welcome")
        return frame, messages[1:], rtt

    def _wire(self, data: bytes) -> str | bytes:
        return data if self._codec.binary else data.decode()

    def _emit(self, event: LinkEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("link listener failed (ignored)")

    async def wait_connected(self) -> None:
        """Wait until a link is up (returns at once if it is)."""
        while self._link is None:
            if self._closed:
                raise ClosedError("the client is closed")
            await self._link_lot.park()
        await trio.lowlevel.checkpoint()

    async def run(self) -> None:
        """Operate until closed or cancelled: keep the link up, dispatch messages.

        Reconnects with backoff and resumes the session after link loss.
        Raises :class:`ConnectionClosed` for close codes that forbid retrying
        (policy, bad handshake, replaced, unsupported version) or when
        ``reconnect`` is off, and the last connection error after
        ``max_reconnect_attempts`` failed attempts.
        """
        if self._running:
            raise LocalProtocolError("run() is already running")
        if self._closed:
            raise ClosedError("the client is closed")
        self._running = True
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._run_scope = nursery.cancel_scope
                nursery.start_soon(self._dispatcher)
                try:
                    await self._supervise()
                except LinkLost as exc:  # re-raised below as the public class, not in a group
                    failure = ConnectionClosed(exc.code, exc.reason)
                except (GenesisError, OSError) as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            self._running = False
            self._run_scope = None

    def _restart_policy(self) -> RestartPolicy:
        cfg = self.config

        def restart_on(exc: BaseException) -> bool:
            if not cfg.reconnect:
                return False
            if isinstance(exc, LinkLost):
                return not exc.fatal
            return isinstance(exc, HandshakeError | OSError)

        return RestartPolicy(
            max_restarts=cfg.max_reconnect_attempts,
            window=cfg.reconnect_window,
            healthy_after=max(cfg.backoff_cap, 2 * cfg.heartbeat_interval),
            backoff_factory=self._backoff_factory,
            restart_on=restart_on,
        )

    async def _supervise(self) -> None:
        supervisor = Supervisor(f"link:{self.component_id}", self._restart_policy())
        await supervisor.run(self._link_once)

    async def _link_once(self) -> None:
        """One link's life: (re)connect if needed, run it, report how it ended."""
        if self._link is None:
            if not self._breaker.allow(trio.current_time()):
                await trio.sleep_until(self._breaker.retry_at())
                self._breaker.allow(trio.current_time())
            self._state = ConnectionState.CONNECTING
            try:
                await self._open_link()
            except (HandshakeError, OSError) as exc:
                self._c["connect_failures"] += 1
                self._breaker.failure(trio.current_time())
                self._state = ConnectionState.DISCONNECTED
                log.info("connect attempt failed: %s", exc)
                raise
        link = self._link
        assert link is not None
        await self._run_link(link)
        self._link = None
        if self._closing:
            return
        fatal = link.code in FATAL_CLOSE_CODES
        self._state = ConnectionState.DISCONNECTED
        self._wake_sub_waiters()
        self._emit(Disconnected(link.code, link.reason, self.config.reconnect and not fatal))
        if link.code == CloseCode.SESSION_VIOLATION:  # the session is corrupt: start afresh
            self._session.sid, self._session.epoch = None, 0
        raise LinkLost(link.code, link.reason, fatal)

    def _wake_sub_waiters(self) -> None:
        for event in self._sub_waiters.values():
            event.set()

    async def _run_link(self, link: Link) -> None:
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._link_task, link, self._write_loop)
                    nursery.start_soon(self._link_task, link, self._heartbeat)
                    await self._reader(link)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(self.config.close_timeout, shield=True):
                await link.conn.aclose(
                    link.code if link.code != 1006 else CloseCode.NORMAL, link.reason[:120]
                )

    async def _reader(self, link: Link) -> None:
        conn = link.conn
        decode = self._codec.decode
        try:
            messages, link.initial = link.initial, []
            while True:
                if not messages:
                    messages = await conn.receive_some()
                link.heartbeat.received(trio.current_time())
                for data in messages:
                    self._handle_frame(link, parse_frame(decode(data), sender="hub"))
                messages = []
        except ConnectionClosed as exc:
            link.fail(exc.code, exc.reason)
        except RemoteProtocolError as exc:
            log.warning("hub broke the protocol: %s", exc)
            link.fail(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])

    def _handle_frame(self, link: Link, frame: Any) -> None:
        kind = type(frame)
        session = self._session
        if kind is Msgs:
            if frame.ack is not None:
                self._on_ack(frame.ack)
            inbound = session.inbound
            seq = frame.seq
            skip = inbound.accept(seq, len(frame.bodies))
            if skip:
                self._c["duplicates_dropped"] += skip
            generation = self._generation
            inbox = self._inbox
            pending = self._pending
            for i in range(skip, len(frame.bodies)):
                body = frame.bodies[i]
                assert not isinstance(body, Rejected)
                re = body.get("re")
                if re is not None:
                    waiter = pending.get(re)
                    if waiter is not None:
                        error = body.get("error")
                        if error is not None:
                            waiter.error = RemoteError(
                                str(error.get("code")), str(error.get("msg", ""))
                            )
                        else:
                            waiter.value = body.get("data")
                        waiter.event.set()
                inbox.append((generation, seq + i, body))
            self._c["messages_received"] += len(frame.bodies) - skip
            self._inbox_wake.set()
        elif kind is Ack:
            self._on_ack(frame.seq)
        elif kind is Ping:
            self._control.append(self._codec.encode(Pong(frame.id).wire()))
            self._writer_wake.set()
        elif kind is Pong:
            waiter_event = self._sub_waiters.get(frame.id)
            if waiter_event is not None:
                waiter_event.set()
            else:
                link.heartbeat.pong(frame.id, trio.current_time())
        elif kind is Error:
            self._c["error_frames"] += 1
            waiter = self._pending.get(frame.id) if frame.id is not None else None
            if waiter is not None:
                waiter.error = RemoteError(frame.code, frame.msg)
                waiter.event.set()
            else:
                self.last_error = frame
                log.warning("hub reported %s: %s (seq %s)", frame.code, frame.msg, frame.seq)
        else:
            raise RemoteProtocolError(f"unexpected frame from the hub: {frame!r}")

    def _on_ack(self, seq: int) -> None:
        if self._session.outbound.ack(seq, sent_only=True):
            self._room.unpark_all()
            self._acked.unpark_all()
            self._writer_wake.set()

    @staticmethod
    async def _link_task(link: Link, body: Callable[[Link], Awaitable[None]]) -> None:
        """Run one of a link's tasks; a closed connection fails the whole link."""
        try:
            await body(link)
        except ConnectionClosed as exc:
            link.fail(exc.code, exc.reason)

    async def _write_loop(self, link: Link) -> None:
        session = self._session
        out = session.outbound
        inbound = session.inbound
        codec = self._codec
        wire = self._wire
        send = link.conn.send
        control = self._control
        max_batch = self.config.max_batch
        half = max(1, link.window // 2)
        c = self._c
        wake = self._writer_wake
        coalescer = Coalescer(max_delay=self.config.coalesce_max_delay)
        while True:
            wake.clear()
            now = trio.current_time()
            sent = False
            while control:
                await send(wire(control.popleft()))
                sent = True
            room = link.window - out.in_flight
            pending = out.last_seq - out.sent
            if pending > 0 and room > 0:
                if coalescer.should_wait(now, out.last_seq, pending):
                    await trio.lowlevel.checkpoint()
                    continue
                entries = out.take(min(room, max_batch))
                payloads = [e.payload for e in entries]
                n = fit_frame([len(p) for p in payloads], link.max_size)
                if n < len(entries):  # the frame would exceed the hub's max_size
                    out.untake(len(entries) - n)
                    del entries[n:], payloads[n:]
                ack = None
                if inbound.released > inbound.acked:
                    ack = inbound.take_ack()
                    self._ack_deadline = math.inf
                frame = codec.deliver("msg" if n == 1 else "batch", entries[0].seq, payloads, ack)
                await send(wire(frame))
                c["frames_sent"] += 1
                c["messages_framed"] += n
                continue
            if inbound.released > inbound.acked and (
                now >= self._ack_deadline or inbound.released - inbound.acked >= half
            ):
                self._ack_deadline = math.inf
                await send(wire(codec.encode(Ack(inbound.take_ack()).wire())))
                sent = True
            if not sent:
                await wake.wait(self._ack_deadline)

    async def _heartbeat(self, link: Link) -> None:
        """Ping on schedule; fail the link when the hub falls silent.

        A task of its own so that a send blocked on a dead network cannot
        hide the silence: every ping is bounded by the dead-peer deadline.
        """
        heartbeat = link.heartbeat
        conn = link.conn
        encode = self._codec.encode
        while True:
            now = trio.current_time()
            if heartbeat.dead(now):
                link.fail(CloseCode.HEARTBEAT_TIMEOUT, "no frame from the hub in time")
                return
            ping = heartbeat.ping_due(now)
            if ping is not None:
                with trio.move_on_at(heartbeat.deadline()):
                    await conn.send(self._wire(encode(ping.wire())))
                continue
            await trio.sleep_until(heartbeat.next_wakeup())

    async def _dispatcher(self) -> None:
        inbox = self._inbox
        session = self._session
        while True:
            if not inbox:
                self._inbox_wake.clear()
                await self._inbox_wake.wait()
                continue
            generation, seq, body = inbox.popleft()
            if body.get("re") is None:
                msg = Message.from_body(body, seq)
                if (
                    inbox
                    and self._default_handler is None
                    and msg.type not in self._handlers
                    and self._queue_nowait(msg)
                ):
                    pass  # queued for receive() without a checkpoint: more are waiting
                else:
                    await self._dispatch_contained(msg)
            if generation == self._generation and seq > session.inbound.released:
                session.inbound.release(seq)
                if self._ack_deadline == math.inf:
                    self._ack_deadline = trio.current_time() + self.config.ack_delay
                    self._writer_wake.set()

    def _queue_nowait(self, msg: Message) -> bool:
        try:
            self._app_send.send_nowait(msg)
        except trio.WouldBlock:
            return False
        return True

    async def _dispatch_contained(self, msg: Message) -> None:
        """Run one message's handler (or queue it), containing any failure."""
        try:
            handled, result = await self._dispatch(msg)
        except Exception as exc:
            self._c["errors_contained"] += 1
            log.exception("handler for %r failed (contained)", msg.type)
            if msg.id is not None and msg.sender is not None:
                await self._reply_quietly(msg, error=f"{type(exc).__name__}: {exc}"[:200])
        else:
            if handled and msg.id is not None and msg.sender is not None:
                await self._reply_quietly(msg, data=result)

    async def _reply_quietly(
        self, msg: Message, *, data: Any = None, error: str | None = None
    ) -> None:
        try:
            await self.reply(msg, data, error=error)
        except (ValueError, TypeError) as exc:
            self._c["errors_contained"] += 1
            log.warning("could not send the reply to %r: %s", msg.type, exc)
            await self.reply(msg, error=f"reply not encodable: {exc}"[:200])

    async def aclose(self, *, end_session: bool = True) -> None:
        """Flush (bounded by ``close_timeout``), end the session, close. Idempotent.

        With ``end_session`` the hub forgets the session (``bye``); without
        it the session waits for a resume that will not come until it expires.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        link = self._link
        with trio.move_on_after(self.config.close_timeout, shield=True):
            if link is not None and link.conn.closed is None:
                try:
                    with trio.move_on_after(self.config.close_timeout / 2):
                        await self.flush()
                    if end_session:
                        await link.conn.send(self._wire(self._codec.encode(Bye().wire())))
                    await link.conn.aclose(CloseCode.NORMAL, "client closing")
                except ConnectionClosed:
                    pass
        self._closed = True
        self._state = ConnectionState.CLOSED
        self._room.unpark_all()
        self._acked.unpark_all()
        self._link_lot.unpark_all()
        self._wake_sub_waiters()
        self._app_send.close()
        if self._run_scope is not None:
            self._run_scope.cancel()
        if link is not None:
            link.scope.cancel()

    # -- statistics ---------------------------------------------------------------

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of this client's metrics."""
        c = self._c
        rtt = self._last_rtt
        p99 = rtt.percentile(0.99)
        return ClientStatistics(
            component_id=self._session.component_id,
            state=self._state,
            connects=c["connects"],
            reconnects=c["reconnects"],
            resumes_recovered=c["resumes_recovered"],
            resumes_failed=c["resumes_failed"],
            connect_failures=c["connect_failures"],
            messages_sent=c["messages_sent"],
            messages_received=c["messages_received"],
            messages_replayed=c["messages_replayed"],
            duplicates_dropped=c["duplicates_dropped"],
            errors_contained=c["errors_contained"],
            error_frames=c["error_frames"],
            pending=len(self._session.outbound),
            inbox=len(self._inbox),
            frames_sent=c["frames_sent"],
            collapse_factor=(c["messages_framed"] / c["frames_sent"]) if c["frames_sent"] else 1.0,
            rtt_ewma_ms=None if rtt.srtt is None else rtt.srtt * 1000,
            rtt_p99_ms=None if p99 is None else p99 * 1000,
            breaker=self._breaker.state.value,
        )

    def get_stats(self) -> dict[str, Any]:
        """The metrics as a plain dict."""
        return attrs.asdict(self.statistics())


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception inside ``group`` (nested groups included), or None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


__all__ = ["TranscendentalWebSocket"]
