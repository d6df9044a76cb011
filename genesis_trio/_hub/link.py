"""One live link on the hub: its reader, router, writer and watchdog.

* The reader hands every WebSocket message to the hub's per-message
  pipeline, which never waits: control frames (ack, ping, pong, sub, unsub)
  take effect at once, and messages are routed at once unless a target is
  full. Then they join the link's *backlog*, in order, and a router task
  (started on demand) routes them as room appears, while the reader goes on
  reading. The reader also owns the dead-peer clock (it counts every frame
  that arrives) and notices a writer stuck on a peer that does not read.
* The writer owns everything that goes out: control frames (pongs, errors),
  pings, deliveries from the session's outbound log (batched, within the
  window) and acknowledgements.
* The watchdog bounds the end: once the link is asked to close (or its task
  is cancelled), it waits ``close_timeout`` and then drops the socket, which
  frees a send that Hypercorn shields from cancellation.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

import trio

from .._core.coalesce import Coalescer
from .._core.codec import Codec
from .._core.errors import CloseCode, ConnectionClosed, ErrorCode
from .._core.frames import HUB_ID, Ack, Error, Msgs
from .._core.heartbeat import Heartbeat
from .._core.session import FRAME_OVERHEAD, fit_frame
from .._runtime.signal import Signal
from .sessions import Outgoing

if TYPE_CHECKING:
    from .hub import TranscendentalExternalWebSocket
    from .sessions import HubSession

log = logging.getLogger("genesis_trio.hub")

MAX_CONTROL_FRAMES = 64


class ServerTransport(Protocol):
    """The hub's view of one accepted WebSocket (ASGI or in-memory)."""

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer has gone."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one encoded frame (text or binary per the codec)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code; never raises."""
        ...

    async def abort(self) -> None:
        """Drop the connection at once, without a close frame; never raises."""
        ...


class Backlogged:
    """A ``msg``/``batch`` frame (or ``bye``) waiting in a link's backlog."""

    __slots__ = ("frame", "next", "size")

    def __init__(self, frame: Msgs | None, start: int, size: int) -> None:
        self.frame = frame
        """The frame; None stands for ``bye``."""
        self.next = start
        """Index of the next body to route."""
        self.size = size
        """Bytes the frame took on the wire (bounded per link)."""


BYE: Final = None


class HubConnection:
    """The tasks and per-link state of one attached session."""

    __slots__ = (
        "_closing",
        "_ended",
        "_nursery",
        "_scope",
        "backlog",
        "backlog_bytes",
        "bad_frames",
        "close_code",
        "close_reason",
        "coalescer",
        "codec",
        "control",
        "crashed",
        "drained",
        "heartbeat",
        "hub",
        "max_frame",
        "peer_closed",
        "routing",
        "sending_since",
        "session",
        "transport",
        "wake",
    )

    def __init__(
        self,
        hub: TranscendentalExternalWebSocket,
        session: HubSession,
        transport: ServerTransport,
        codec: Codec,
        now: float,
        max_frame: int = 1 << 20,
    ) -> None:
        cfg = hub.config
        self.max_frame = min(max_frame, cfg.max_message_size)  # the client's hello.max_size
        self.hub = hub
        self.session = session
        self.transport = transport
        self.codec = codec
        self.wake: Signal = session.wake
        self.heartbeat = Heartbeat(
            cfg.heartbeat_interval, cfg.heartbeat_floor, cfg.heartbeat_ceiling, now=now
        )
        self.control: list[bytes] = []  # short-lived and small: a list is 10x lighter than a deque
        self.bad_frames: list[float] | None = None
        self.backlog: deque[Backlogged] = deque()
        self.backlog_bytes = 0
        self.routing = False
        """True while the router task runs."""
        self.drained = Signal()
        """Wakes the reader when the backlog shrank (it stops reading past a byte bound)."""
        self.sending_since = math.inf
        """When the send in progress began (inf: none); a send blocked too long is a slow peer."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_closed = False
        self.crashed = False
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._closing = trio.Event()
        self._ended = trio.Event()
        self.coalescer = Coalescer(max_delay=cfg.coalesce_max_delay)

    @property
    def attached(self) -> bool:
        """True while this connection is the session's live link."""
        return self.session.connection is self

    def _too_large_notice(self, out: Outgoing, size: int) -> bytes:
        """What a client gets, in place of a message larger than it accepts."""
        self.hub._counters.errors_contained += 1
        body = out.body
        notice: dict[str, object] = {
            "type": body.get("type", "?"),
            "from": body.get("from", "$hub"),
            "error": {
                "code": ErrorCode.TOO_LARGE.value,
                "msg": f"a message of {size} bytes exceeds this client's max_size "
                f"({self.max_frame}); it was not delivered",
            },
        }
        rid, sender_id = body.get("id"), body.get("from")
        requester = self.hub._table.by_id.get(sender_id) if sender_id else None
        if rid is not None and requester is not None:  # the requester learns it at once
            reply = {
                "type": notice["type"],
                "from": HUB_ID,
                "to": sender_id,
                "re": rid,
                "error": notice["error"],
            }
            self.hub._append_all((requester,), Outgoing(reply), force=requester)
        return self.codec.encode(notice)

    def queue_control(self, frame: bytes) -> bool:
        """Queue a control frame for the writer; False when the queue is full."""
        if len(self.control) >= MAX_CONTROL_FRAMES:
            return False
        self.control.append(frame)
        self.wake.set()
        return True

    def report(self, error: Error) -> None:
        """Send an error frame (best effort: dropped if the control queue is full)."""
        self.queue_control(self.codec.encode(error.wire()))

    def count_bad_frame(self, now: float) -> bool:
        """Record a malformed frame; True when the tolerated rate is exceeded."""
        cfg = self.hub.config
        window = self.bad_frames
        if window is None:
            window = self.bad_frames = []
        window.append(now)
        cutoff = now - cfg.bad_frame_window
        while window and window[0] <= cutoff:
            del window[0]
        return len(window) > cfg.max_bad_frames

    def close_soon(self, code: int, reason: str) -> None:
        """Detach from the session now and make the link close with ``code``.

        The link's tasks are cancelled; if they have not ended within
        ``close_timeout`` (a send blocked on a peer that does not read), the
        watchdog drops the socket.
        """
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.attached:
            self.session.detach(trio.current_time())
        self._scope.cancel()
        self._closing.set()

    # -- the backlog ------------------------------------------------------------

    def hold(self, frame: Msgs | None, start: int, size: int) -> None:
        """Put a frame (from body ``start`` on; None: ``bye``) behind those waiting."""
        self.backlog.append(Backlogged(frame, start, size))
        self.backlog_bytes += size
        if not self.routing and self._nursery is not None:
            self.routing = True
            self._nursery.start_soon(self._router)

    async def _router(self) -> None:
        """Route the backlog in order, waiting for room; ends when it is empty."""
        hub = self.hub
        backlog = self.backlog
        try:
            while backlog and self.attached:
                item = backlog[0]
                if item.frame is BYE:
                    hub._say_bye(self)
                    return
                if not await hub._route_rest(self, item):
                    return
                backlog.popleft()
                self.backlog_bytes -= item.size
                self.drained.set()
        finally:
            self.routing = False

    # -- the link's tasks -------------------------------------------------------

    async def run(self) -> None:
        """Run the link's tasks until it ends (call :meth:`cleanup` after)."""
        async with trio.open_nursery() as outer:
            outer.start_soon(self._watchdog)
            try:
                with self._scope:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._write_until_gone)
                        await self._reader()
                        nursery.cancel_scope.cancel()
            finally:
                self._nursery = None
                self._ended.set()
                outer.cancel_scope.cancel()  # the watchdog is no longer needed

    async def _watchdog(self) -> None:
        """Drop the socket if the link has not ended ``close_timeout`` after it had to."""
        try:
            await self._closing.wait()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.hub.config.close_timeout):
                    await self._ended.wait()
                if not self._ended.is_set():
                    log.info("link of %s did not end in time: aborted", self.session.component_id)
                    self.peer_closed = True
                    await self.transport.abort()

    async def cleanup(self) -> None:
        """Detach from the session and close the link; the caller bounds the time."""
        if self.attached:
            self.session.detach(trio.current_time())
        if not self.peer_closed:
            code = self.close_code
            if code is None and self.crashed:
                code, self.close_reason = CloseCode.INTERNAL_ERROR, "internal error"
                self.close_code = code
            await self.transport.close(
                code if code is not None else CloseCode.NORMAL, self.close_reason
            )

    async def _reader(self) -> None:
        receive = self.transport.receive
        process = self.hub._process_message_transcendentally
        heartbeat = self.heartbeat
        cfg = self.hub.config
        limit = cfg.max_backlog_bytes
        stall = cfg.slow_consumer_timeout
        cid = self.session.component_id
        while True:
            if self.backlog_bytes > limit:
                # Backpressure: read nothing more until the router catches up. The
                # dead-peer clock stops meanwhile (nothing we do not read can count).
                self.drained.clear()
                await self.drained.wait()
                heartbeat.received(trio.current_time())
                continue
            with trio.move_on_at(min(heartbeat.deadline(), self.sending_since + stall)) as timer:
                data = await receive()
            if timer.cancelled_caught:
                now = trio.current_time()
                if heartbeat.dead(now):
                    self.hub._counters.heartbeat_timeouts += 1
                    self.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "no frame from the client in time")
                    return
                if now >= self.sending_since + stall:
                    self.hub._counters.slow_consumers_closed += 1
                    self.close_soon(CloseCode.SLOW_CONSUMER, "the client does not read")
                    return
                continue
            if data is None:
                self.peer_closed = True
                return
            heartbeat.received(trio.current_time())
            await process(data, cid, connection=self)
            if not self.attached:
                return

    async def _write_until_gone(self) -> None:
        try:
            await self._writer()
        except ConnectionClosed:
            self.peer_closed = True
            self._scope.cancel()

    async def _send(self, data: bytes) -> None:
        self.sending_since = trio.current_time()
        await self.transport.send(data)
        self.sending_since = math.inf

    async def _writer(self) -> None:
        hub = self.hub
        cfg = hub.config
        stats = hub._counters
        session = self.session
        out = session.outbound
        inbound = session.inbound
        codec = self.codec
        send = self._send
        heartbeat = self.heartbeat
        control = self.control
        window, max_batch, half = cfg.window, cfg.max_batch, max(1, cfg.window // 2)
        max_frame = self.max_frame
        coalescer = self.coalescer
        fanout = hub._fanout
        fanout_slept = False
        while self.attached:
            self.wake.clear()
            now = trio.current_time()
            sent = False
            while control:
                await send(control.pop(0))
                sent = True
            ping = heartbeat.ping_due(now)
            if ping is not None:
                await send(codec.encode(ping.wire()))
                sent = True
            room = window - out.in_flight
            pending = min(out.last_seq, out.durable) - out.sent
            if pending > 0 and room > 0:
                if pending < max_batch and fanout.active(now) and not fanout_slept:
                    # Right after a wide fan-out: sleep once (bounded) while the
                    # publisher's task processes more, then send them together.
                    fanout_slept = True
                    await trio.sleep(fanout.hold)
                    continue
                fanout_slept = False
                if coalescer.should_wait(now, out.last_seq, pending):
                    await trio.lowlevel.checkpoint()
                    continue
                entries = out.take(min(room, max_batch))
                bodies = [e.payload.encoded(codec) for e in entries]
                n = fit_frame([len(b) for b in bodies], max_frame)
                if n < len(entries):  # the frame would exceed what the client accepts
                    out.untake(len(entries) - n)
                    del entries[n:], bodies[n:]
                if len(bodies[0]) > max_frame - FRAME_OVERHEAD:
                    bodies[0] = self._too_large_notice(entries[0].payload, len(bodies[0]))
                ack = None
                if inbound.released > inbound.acked:
                    ack = inbound.take_ack()
                    session.ack_deadline = math.inf
                await send(codec.deliver("msg" if n == 1 else "batch", entries[0].seq, bodies, ack))
                stats.messages_out += n
                stats.delivery_frames += 1
                continue
            if inbound.released > inbound.acked and (
                now >= session.ack_deadline or inbound.released - inbound.acked >= half
            ):
                session.ack_deadline = math.inf
                await send(codec.encode(Ack(inbound.take_ack()).wire()))
                sent = True
            if not sent:
                deadline = min(heartbeat.next_ping, session.ack_deadline)
                await self.wake.wait(deadline)
