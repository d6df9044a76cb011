"""The client's links: connect, handshake, run one link, reconnect and resume.

:class:`LinkKeeper` keeps a link up for one client: it opens a link
(TCP, WebSocket upgrade, ``hello``/``welcome``), runs it, and, under a
:class:`~genesis_trio._runtime.supervisor.Supervisor` with jittered backoff
and a circuit breaker, opens the next one when it drops, resuming the
session. Each :class:`ClientLink` has three tasks:

* the reader: decodes frames, drops duplicates, hands new messages to the
  dispatcher (never waiting for the application), applies acks, answers pings;
* the writer: a thin shell over the core's :class:`LinkProtocol` (what to
  send, batched within the window; when to acknowledge), plus control frames;
* the heartbeat: pings when the hub has been silent, and fails the link when
  it stays silent -- a task of its own, so that a send blocked on a dead
  network cannot hide the silence.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import attrs
import trio

from .._core.backoff import CircuitBreaker
from .._core.coalesce import Coalescer
from .._core.codec import Codec
from .._core.config import ClientConfig
from .._core.errors import (
    CloseCode,
    ConnectionClosed,
    HandshakeError,
    RemoteProtocolError,
)
from .._core.frames import (
    Ack,
    Error,
    MessageFrame,
    Ping,
    Pong,
    Rejected,
    Subscribe,
    Welcome,
    parse_frame,
)
from .._core.heartbeat import Heartbeat, RttEstimator
from .._core.link import Deliver, Hold, Idle, LinkProtocol, SendAck
from .._core.session import ClientSession
from .._runtime.signal import Signal
from .._runtime.supervisor import RestartPolicy, Supervisor
from .dispatch import Dispatcher
from .transport import ClientTransport, StreamFactory, connect_websocket
from .types import (
    FATAL_CLOSE_CODES,
    SUB_PING_BASE,
    ClientCounters,
    Connected,
    ConnectionState,
    Disconnected,
    LinkEvent,
    LinkLost,
)

log = logging.getLogger("genesis_trio.client")

MAX_CONTROL_FRAMES: Final = 64
"""Control frames (pongs, sub/unsub) queued for the writer at most."""


@attrs.define(eq=False)
class ClientLink:
    """One WebSocket link of a client: its transport, heartbeat and protocol."""

    conn: ClientTransport
    heartbeat: Heartbeat
    protocol: LinkProtocol[bytes]
    initial: list[str | bytes] = attrs.field(factory=list)
    """Frames that arrived together with the welcome (read first)."""
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    code: int | None = None
    """The close code, once the link has failed."""
    reason: str = ""

    @property
    def window(self) -> int:
        """The hub's flow-control window (``welcome.window``)."""
        return self.protocol.window

    @property
    def max_size(self) -> int:
        """The largest frame the hub accepts (``welcome.max_size``)."""
        return self.protocol.max_frame

    def fail(self, code: int, reason: str) -> None:
        """End the link (the first reason given wins)."""
        if self.code is None:
            self.code, self.reason = code, reason
        self.scope.cancel()


class LinkKeeper:
    """Keeps one client's link up; see the module docstring."""

    def __init__(
        self,
        uri: str,
        config: ClientConfig,
        codec: Codec,
        session: ClientSession[bytes],
        dispatcher: Dispatcher,
        counters: ClientCounters,
        *,
        stream_factory: StreamFactory | None,
        backoff_factory: Callable[[], Iterable[float]],
        emit: Callable[[LinkEvent], None],
    ) -> None:
        self.uri = uri
        self.config = config
        self.codec = codec
        self.session = session
        self.dispatcher = dispatcher
        self.counters = counters
        self.stream_factory = stream_factory
        self.backoff_factory = backoff_factory
        self.emit = emit
        self.link: ClientLink | None = None
        self.state = ConnectionState.IDLE
        self.closing = False
        """From ``aclose()``'s start: a link ending then is no reason to reconnect."""
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_reset)
        self.rtt = RttEstimator()
        """Round-trip times, kept across links."""
        self.writer_wake = Signal()
        self.room = trio.lowlevel.ParkingLot()
        """Senders waiting for room in the outbound log."""
        self.acked = trio.lowlevel.ParkingLot()
        """``flush()`` callers waiting for acknowledgements."""
        self.link_lot = trio.lowlevel.ParkingLot()
        """``wait_connected()`` callers."""
        self.control: deque[bytes] = deque()
        self._control_room = trio.lowlevel.ParkingLot()
        self._sub_waiters: dict[int, trio.Event] = {}
        self._sub_ids = itertools.count(SUB_PING_BASE)
        self.last_error: Error | None = None
        """The most recent error frame from the hub not tied to a request."""
        self._up: Callable[[], object] | None = None

    # -- releasing and acknowledging ------------------------------------------------

    def release(self, generation: int, seq: int) -> None:
        """The dispatcher handed message ``seq`` to the application: acknowledge it."""
        inbound = self.session.inbound
        if generation != self.dispatcher.generation or seq <= inbound.released:
            return
        inbound.release(seq)
        link = self.link
        if link is not None and link.protocol.released(trio.current_time()):
            self.writer_wake.set()

    def _on_ack(self, seq: int) -> None:
        if self.session.outbound.ack(seq, sent_only=True):
            self.room.unpark_all()
            self.acked.unpark_all()
            self.writer_wake.set()

    def wire(self, data: bytes) -> str | bytes:
        """An encoded frame as the WebSocket message the codec uses (text or binary)."""
        return data if self.codec.binary else data.decode()

    # -- control frames and subscriptions ---------------------------------------------

    def queue_control(self, frame: bytes) -> bool:
        """Queue a control frame; False (dropped) when the queue is full."""
        if len(self.control) >= MAX_CONTROL_FRAMES:
            return False
        self.control.append(frame)
        self.writer_wake.set()
        return True

    async def change_topics(self, changed: tuple[str, ...], *, remove: bool) -> None:
        """Tell the hub, and wait until it has applied it (or the link dropped)."""
        link = self.link
        if not changed or link is None:
            await trio.lowlevel.checkpoint()
            return
        while len(self.control) > MAX_CONTROL_FRAMES - 2:
            await self._control_room.park()
        done = trio.Event()
        ping_id = next(self._sub_ids)
        self._sub_waiters[ping_id] = done
        encode = self.codec.encode
        self.control.append(encode(Subscribe(changed, remove=remove).wire()))
        self.control.append(encode(Ping(ping_id).wire()))
        self.writer_wake.set()
        try:
            await done.wait()  # a pong proves every sub before its ping applied (§2.6)
        finally:
            self._sub_waiters.pop(ping_id, None)

    def wake_everyone(self) -> None:
        """The client closed: release every waiter."""
        self.room.unpark_all()
        self.acked.unpark_all()
        self.link_lot.unpark_all()
        self._control_room.unpark_all()
        for event in self._sub_waiters.values():
            event.set()

    # -- opening a link -----------------------------------------------------------------

    async def open_link(self) -> None:
        """Connect, upgrade and complete the handshake; the link becomes :attr:`link`."""
        cfg = self.config
        codec = self.codec
        try:
            with trio.fail_after(cfg.connect_timeout):
                conn = await connect_websocket(
                    self.uri,
                    [codec.subprotocol],
                    compress=cfg.compress,
                    max_message_size=cfg.max_message_size,
                    stream_factory=self.stream_factory,
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
        session = self.session
        result = session.welcome(welcome)
        if not result.recovered:
            self.dispatcher.new_generation()
        now = trio.current_time()
        # The hub pings every welcome.hb ms; we ping only when it has been silent
        # for longer than that (half again), so idle links carry half the frames.
        interval = max(cfg.heartbeat_interval, 1.5 * welcome.hb / 1000)
        heartbeat = Heartbeat(
            interval, cfg.heartbeat_floor, cfg.heartbeat_ceiling, now=now, when_silent=True
        )
        heartbeat.rtt = self.rtt
        heartbeat.rtt.add(rtt)
        # hello.ack told the hub what we hold; what is released is acknowledged from here.
        session.inbound.acked = session.inbound.released
        protocol: LinkProtocol[bytes] = LinkProtocol(
            session.outbound,
            session.inbound,
            window=welcome.window,
            max_frame=welcome.max_size,
            encode=_identity,
            max_batch=cfg.max_batch,
            ack_delay=cfg.ack_delay,
            coalescer=Coalescer(max_delay=cfg.coalesce_max_delay),
        )
        self.link = ClientLink(conn, heartbeat, protocol, rest)
        self.control.clear()
        c = self.counters
        c.connects += 1
        if not result.first_connect:
            c.reconnects += 1
            if result.recovered:
                c.resumes_recovered += 1
            else:
                c.resumes_failed += 1
            c.messages_replayed += result.replay
        self.state = ConnectionState.CONNECTED
        self.breaker.success()
        self.link_lot.unpark_all()
        self.acked.unpark_all()  # the welcome may have acknowledged messages
        self.room.unpark_all()
        self.writer_wake.set()
        self.emit(
            Connected(
                welcome.sid, welcome.epoch, result.first_connect, result.recovered, result.replay
            )
        )

    async def _handshake(self, conn: ClientTransport) -> tuple[Welcome, list[str | bytes], float]:
        codec = self.codec
        if conn.subprotocol not in (None, codec.subprotocol):
            raise HandshakeError(f"hub chose subprotocol {conn.subprotocol!r}")
        started = trio.current_time()
        hello = self.session.hello(self.config.token, self.config.max_message_size)
        await conn.send(self.wire(codec.encode(hello.wire())))
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

    # -- supervision ------------------------------------------------------------------------

    def restart_policy(self) -> RestartPolicy:
        """Reconnect after a lost link (not after a fatal close code), with backoff."""
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
            backoff_factory=self.backoff_factory,
            restart_on=restart_on,
        )

    async def supervise(self, name: str, up: Callable[[], object] | None = None) -> None:
        """Keep a link up until closed; raises what ends it for good.

        ``up`` is called once, when the first link is up.
        """
        self._up = up
        supervisor = Supervisor(f"link:{name}", self.restart_policy())
        await supervisor.run(self._link_once)

    async def _link_once(self) -> None:
        """One link's life: (re)connect if needed, run it, report how it ended."""
        if self.link is None:
            if not self.breaker.allow(trio.current_time()):
                await trio.sleep_until(self.breaker.retry_at())
                self.breaker.allow(trio.current_time())
            self.state = ConnectionState.CONNECTING
            try:
                await self.open_link()
            except (HandshakeError, OSError) as exc:
                self.counters.connect_failures += 1
                self.breaker.failure(trio.current_time())
                self.state = ConnectionState.DISCONNECTED
                log.info("connect attempt failed: %s", exc)
                raise
        link = self.link
        assert link is not None
        up, self._up = self._up, None
        if up is not None:
            up()
        await self._run_link(link)
        self.link = None
        if self.closing:
            return
        code = link.code if link.code is not None else CloseCode.ABNORMAL_CLOSURE
        fatal = code in FATAL_CLOSE_CODES
        self.state = ConnectionState.DISCONNECTED
        for event in self._sub_waiters.values():
            event.set()  # on the next link, hello.topics carries the subscriptions
        self.emit(Disconnected(code, link.reason, self.config.reconnect and not fatal))
        if code == CloseCode.SESSION_VIOLATION:  # the session is corrupt: start afresh
            self.session.sid, self.session.epoch = None, 0
        raise LinkLost(code, link.reason, fatal)

    async def _run_link(self, link: ClientLink) -> None:
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._link_task, link, self._writer)
                    nursery.start_soon(self._link_task, link, self._heartbeat)
                    await self._reader(link)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(self.config.close_timeout, shield=True):
                code = link.code
                if code is None or code == CloseCode.ABNORMAL_CLOSURE:
                    code = CloseCode.NORMAL
                await link.conn.aclose(code, link.reason[:120])

    @staticmethod
    async def _link_task(link: ClientLink, body: Callable[[ClientLink], Awaitable[None]]) -> None:
        """Run one of a link's tasks; a closed connection fails the whole link."""
        try:
            await body(link)
        except ConnectionClosed as exc:
            link.fail(exc.code, exc.reason)

    # -- the link's tasks -----------------------------------------------------------------

    async def _reader(self, link: ClientLink) -> None:
        conn = link.conn
        decode = self.codec.decode
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

    def _handle_frame(self, link: ClientLink, frame: Any) -> None:
        kind = type(frame)
        if kind is MessageFrame:
            if frame.ack is not None:
                self._on_ack(frame.ack)
            seq = frame.seq
            bodies = frame.bodies
            skip = self.session.inbound.accept(seq, len(bodies))
            if skip:
                self.counters.duplicates_dropped += skip
            deliver = self.dispatcher.deliver
            for i in range(skip, len(bodies)):
                body = bodies[i]
                assert not isinstance(body, Rejected)
                deliver(seq + i, body)
            self.counters.messages_received += len(bodies) - skip
            self.dispatcher.woken()
        elif kind is Ack:
            self._on_ack(frame.seq)
        elif kind is Ping:
            self.queue_control(self.codec.encode(Pong(frame.id).wire()))
        elif kind is Pong:
            waiter = self._sub_waiters.get(frame.id)
            if waiter is not None:
                waiter.set()
            else:
                link.heartbeat.pong(frame.id, trio.current_time())
        elif kind is Error:
            self.counters.error_frames += 1
            if not self.dispatcher.error(frame):
                self.last_error = frame
                log.warning("hub reported %s: %s (seq %s)", frame.code, frame.msg, frame.seq)
        else:
            raise RemoteProtocolError(f"unexpected frame from the hub: {frame!r}")

    async def _writer(self, link: ClientLink) -> None:
        """Write what the link protocol says; control frames first."""
        protocol = link.protocol
        codec = self.codec
        wire = self.wire
        send = link.conn.send
        control = self.control
        wake = self.writer_wake
        c = self.counters
        while True:
            wake.clear()
            while control:
                await send(wire(control.popleft()))
                self._control_room.unpark_all()
            step = protocol.poll(trio.current_time())
            if type(step) is Deliver:
                await send(wire(codec.frame(step.kind, step.seq, step.bodies, step.ack)))
                c.frames_sent += 1
                c.messages_framed += len(step.bodies)
            elif type(step) is SendAck:
                await send(wire(codec.encode(Ack(step.seq).wire())))
            elif type(step) is Idle:
                await wake.wait(step.until)
            elif type(step) is Hold:  # pragma: no cover - the client has no fan-out window
                await trio.sleep_until(step.until)
            else:  # Yield: a batch is forming
                await trio.lowlevel.checkpoint()

    async def _heartbeat(self, link: ClientLink) -> None:
        """Ping on schedule; fail the link when the hub falls silent.

        A task of its own so that a send blocked on a dead network cannot
        hide the silence: every ping is bounded by the dead-peer deadline.
        """
        heartbeat = link.heartbeat
        conn = link.conn
        encode = self.codec.encode
        while True:
            now = trio.current_time()
            if heartbeat.dead(now):
                link.fail(CloseCode.HEARTBEAT_TIMEOUT, "no frame from the hub in time")
                return
            ping = heartbeat.ping_due(now)
            if ping is not None:
                with trio.move_on_at(heartbeat.deadline()):
                    await conn.send(self.wire(encode(ping.wire())))
                continue
            await trio.sleep_until(heartbeat.next_wakeup())


def _identity(payload: bytes) -> bytes:
    return payload
