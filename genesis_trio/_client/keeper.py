"""Keeping a client's link up: connect, handshake, run, reconnect and resume.

:class:`LinkKeeper` opens a link (TCP, WebSocket upgrade, ``hello`` and
``welcome``), runs it (:class:`~.link.ClientLink`) and, under a
:class:`~genesis_trio._runtime.supervisor.Supervisor` with jittered backoff
and a circuit breaker, opens the next one when it drops, resuming the
session. It also holds what outlives a link: the control queue, the
subscription barrier, the wake-ups senders and ``flush()`` park on.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import trio

from .._core.backoff import CircuitBreaker
from .._core.codec import Codec
from .._core.config import ClientConfig
from .._core.errors import (
    CloseCode,
    ConnectionClosed,
    HandshakeError,
    SendTimeout,
)
from .._core.frames import (
    Bye,
    Error,
    Ping,
    Subscribe,
)
from .._core.heartbeat import RttEstimator
from .._core.session import ClientSession
from .._runtime.dispatch import Dispatcher
from .._runtime.logs import LogBudget
from .._runtime.signal import Signal
from .._runtime.supervisor import RestartPolicy, Supervisor
from .handshake import open_link
from .link import ClientLink
from .transport import StreamFactory
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

SEND_TURNS: Final = 64
"""Sends appended between two schedule points while the outbound log has room."""


class LinkKeeper:
    """Keeps one client's link up; see the module docstring."""

    def __init__(
        self,
        uris: tuple[str, ...],
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
        self.uris = uris
        """The hub's addresses (several nodes of a cluster: each failed attempt tries the next)."""
        self._turn = 0
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
        self._error_log = LogBudget()
        self._up: Callable[[], object] | None = None
        self._turns = SEND_TURNS

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

    def acknowledged(self, seq: int) -> None:
        """The hub acknowledged our messages up to ``seq`` (LinkHost)."""
        if self.session.outbound.ack(seq, sent_only=True):
            self.room.unpark_all()
            self.acked.unpark_all()
            self.writer_wake.set()

    def wire(self, data: bytes) -> str | bytes:
        """An encoded frame as the WebSocket message the codec uses (text or binary)."""
        return data if self.codec.binary else data.decode()

    # -- control frames and subscriptions ---------------------------------------------

    def control_sent(self) -> None:
        """The writer sent a control frame: a subscription change may queue its own."""
        self._control_room.unpark_all()

    def subscription_confirmed(self, ping_id: int) -> bool:
        """A pong: wake the subscription change it confirms; False for a heartbeat's."""
        waiter = self._sub_waiters.get(ping_id)
        if waiter is None:
            return False
        waiter.set()
        return True

    def error_frame(self, frame: Error) -> None:
        """An error frame: it fails the request it names, or is kept in :attr:`last_error`."""
        self.counters.error_frames += 1
        if not self.dispatcher.error(frame):
            self.last_error = frame
            dropped = self._error_log.take(trio.current_time())
            if dropped is not None:  # 10 a minute: a send loop to a missing id must not flood
                more = f" [{dropped} more error frames not logged]" if dropped else ""
                log.warning(
                    "hub reported %s: %s (seq %s)%s", frame.code, frame.msg, frame.seq, more
                )

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
        if not changed or link is None or self.closing:  # closing: no pong will come
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

    # -- the outbound side --------------------------------------------------------------

    async def enqueue(self, payload: bytes, check_open: Callable[[], None]) -> int:
        """Append an encoded message to the outbound log, waiting (bounded) for room.

        Always a cancellation point. While there is room it is a schedule
        point only every :data:`SEND_TURNS` calls: a sender in a loop appends
        a burst, and the writer then sends it in one frame.
        """
        out = self.session.outbound
        room = out.has_room
        if room:
            if self._turns > 0:
                await trio.lowlevel.checkpoint_if_cancelled()  # yields only to raise Cancelled
                self._turns -= 1
            else:
                self._turns = SEND_TURNS
                await trio.lowlevel.checkpoint()
                room = out.has_room  # another sender may have filled the log meanwhile
        if not room:
            with trio.move_on_after(self.config.send_timeout):
                while not out.has_room and not self.closing:
                    await self.room.park()
            check_open()
            if not out.has_room:
                wait = self.config.send_timeout
                raise SendTimeout(f"outbound buffer full ({out.capacity} messages) for {wait} s")
        seq = out.append_unchecked(payload, 0.0, len(payload))  # room checked; never expired
        self.counters.messages_sent += 1
        if seq - out.sent == 1:
            # The first unsent message: the writer may be idle. (With more unsent,
            # it is not: it idles only with nothing to send or no room, and an
            # acknowledgement wakes it then.)
            self.writer_wake.set()
        return seq

    async def flush(self, check_open: Callable[[], None]) -> None:
        """Wait until the hub has acknowledged everything appended so far (this epoch)."""
        session = self.session
        out = session.outbound
        target = out.last_seq
        epoch = session.epoch
        while out.entries and out.entries[0].seq <= target and epoch == session.epoch:
            check_open()
            await self.acked.park()
        await trio.lowlevel.checkpoint()

    # -- connecting and closing -----------------------------------------------------------

    async def connect(self) -> None:
        """One attempt at a link (one per address), unless one is up; the last error if none."""
        if self.link is not None:
            await trio.lowlevel.checkpoint()
            return
        self.state = ConnectionState.CONNECTING
        for attempt in range(len(self.uris)):
            try:
                await self.open_link()
                return
            except Exception:
                if attempt == len(self.uris) - 1:
                    self.state = ConnectionState.DISCONNECTED
                    raise
            except BaseException:
                self.state = ConnectionState.DISCONNECTED
                raise

    async def wait_connected(self, check_open: Callable[[], None]) -> None:
        """Wait until a link is up (at once if it is)."""
        while self.link is None:
            check_open()
            await self.link_lot.park()
        await trio.lowlevel.checkpoint()

    async def close(self, end_session: bool) -> ClientLink | None:
        """Flush (bounded), say ``bye`` if asked, close the link; return it (to cancel)."""
        self.closing = True
        link = self.link
        timeout = self.config.close_timeout
        with trio.move_on_after(timeout, shield=True):
            if link is not None and link.conn.closed is None:
                try:
                    with trio.move_on_after(timeout / 2):
                        await self.flush(_open)
                    if end_session:
                        await link.conn.send(self.wire(self.codec.encode(Bye().wire())))
                    await link.conn.aclose(CloseCode.NORMAL, "client closing")
                except ConnectionClosed:
                    pass
        self.state = ConnectionState.CLOSED
        self.wake_everyone()
        return link

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
        uri = self.uris[self._turn % len(self.uris)]
        try:
            link, welcome, result = await open_link(
                uri, self.config, self.codec, self.session, self.rtt, self.stream_factory
            )
        except BaseException:
            self._turn += 1  # the next node, if there are several
            raise
        if not result.recovered:
            self.dispatcher.new_generation()
        self.link = link
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
        try:
            await link.run(self)
        finally:  # cancelled too: the link is closed, and a later run() opens a new one
            self.link = None
            if self.state is ConnectionState.CONNECTED:
                self.state = ConnectionState.DISCONNECTED
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


def _open() -> None:
    """Closing: flushing goes on, nothing to check."""
