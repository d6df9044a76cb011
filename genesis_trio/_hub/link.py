"""One live link on the hub: its reader, router, writer and watchdog.

* The reader hands every WebSocket message to the hub's per-message pipeline
  (:meth:`LinkServices.process`), which never waits: control frames (ack,
  ping, pong, sub, unsub) take effect at once, and messages are routed at
  once unless a target is full. Then they join the link's *backlog*, in
  order, and a router task (started on demand) routes them as room appears,
  while the reader goes on reading. The reader also owns the dead-peer clock
  (it counts every frame that arrives) and notices a writer stuck on a peer
  that does not read.
* The writer (:mod:`.writer`) moves what the core's :class:`LinkProtocol`
  says: deliveries (batched, within the window), acknowledgements, plus
  control frames and pings. Its task runs only while there is something to
  write; the reader's receive timer starts it again when a delayed
  acknowledgement or a ping falls due.
* The watchdog bounds the end: once the link is asked to close (or its task
  is cancelled), a watchdog task starts, waits ``close_timeout`` and then
  drops the socket, which frees a send that Hypercorn shields from
  cancellation.

A link knows its hub only through :class:`LinkServices`.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import deque
from typing import Final, Protocol

import trio

from .._core.coalesce import Coalescer, FanoutWindow
from .._core.codec import EncodedBody
from .._core.config import HubConfig
from .._core.errors import CloseCode, ConnectionClosed
from .._core.frames import Error, MessageFrame
from .._core.heartbeat import Heartbeat
from .._core.link import BYE, Backlogged, LinkProtocol
from .._runtime.signal import Signal
from .auth import Identity
from .endpoint import ServerTransport
from .limits import BadFrames, RateLimits
from .sessions import HubSession
from .stats import HubCounters
from .writer import IDLE, LinkWriter

NO_BACKLOG: Final[deque[Backlogged]] = deque(maxlen=0)
"""Every link's backlog until it needs one (never appended to)."""

log = logging.getLogger("genesis_trio.hub")

MAX_CONTROL_FRAMES: Final = 64
"""Control frames (pongs, errors) queued per link; errors beyond are dropped (advisory)."""
CONTROL_HIGH_WATER: Final = MAX_CONTROL_FRAMES // 2
"""Queued control frames at which the reader stops reading until the writer catches up
(so every ping is answered: one frame read queues at most a pong and an error)."""


class LinkServices(Protocol):
    """What a link needs of its hub, and nothing more."""

    @property
    def config(self) -> HubConfig:
        """The hub's configuration."""
        ...

    @property
    def counters(self) -> HubCounters:
        """The hub's counters."""
        ...

    @property
    def fanout(self) -> FanoutWindow:
        """Marks the moments after a wide fan-out (writers hold once for a batch)."""
        ...

    def process(self, data: str | bytes, link: HubLink) -> None:
        """The per-message pipeline: decode, validate, act; never waits for room."""
        ...

    async def route_held(self, link: HubLink, item: Backlogged) -> bool:
        """Route a held frame's remaining bodies, waiting for room; False: the link ended."""
        ...

    def say_bye(self, link: HubLink) -> None:
        """End the link's session (``bye``)."""
        ...

    def undeliverable(self, link: HubLink, out: EncodedBody, problem: int | Exception) -> bytes:
        """The notice replacing a message too large (``problem``: its size) or not
        representable (the encoder's exception) for the link's client."""
        ...


class HubLink(LinkWriter):
    """The tasks and per-link state of one attached session."""

    services: LinkServices

    __slots__ = (
        "__weakref__",
        "_done",
        "_ended",
        "_nursery",
        "_watching",
        "backlog",
        "backlog_bytes",
        "bad_frames",
        "close_code",
        "close_reason",
        "codec",
        "control",
        "crashed",
        "drained",
        "expires",
        "heartbeat",
        "identity",
        "limits",
        "protocol",
        "routing",
        "services",
        "session",
        "transport",
        "units",
    )

    def __init__(
        self,
        services: LinkServices,
        session: HubSession,
        transport: ServerTransport,
        now: float,
        max_frame: int = 1 << 20,
    ) -> None:
        cfg = services.config
        self.services = services
        self.session = session
        self.transport = transport
        codec = self.codec = transport.codec
        self._signal = IDLE
        """Wakes a lingering writer (one of its own while it runs)."""
        self._writing = False
        """True while the writer task runs."""
        self.write_at = math.inf
        """When the writer, gone idle, must run again (the reader's clock starts it)."""
        self._timer: trio.CancelScope | None = None
        """The reader's receive timer, while it waits."""
        session.wake = self  # the session's wake-ups start this link's writer
        self.heartbeat = Heartbeat(
            cfg.heartbeat_interval, cfg.heartbeat_floor, cfg.heartbeat_ceiling, now=now
        )

        me = weakref.ref(self)  # the protocol keeps ``encode``: no cycle through the link

        def encode(out: EncodedBody) -> bytes:
            try:
                return out.encoded(codec)
            except TypeError as exc:  # bytes for a JSON client, say: a notice instead
                link = me()
                assert link is not None  # encode runs only while the link does
                return services.undeliverable(link, out, exc)

        self.protocol: LinkProtocol[EncodedBody] = LinkProtocol(
            session.outbound,
            session.inbound,
            window=cfg.window,
            max_frame=min(max_frame, cfg.max_message_size),  # the client's hello.max_size
            encode=encode,
            overhead=codec.overhead,
            max_batch=cfg.max_batch,
            ack_delay=cfg.ack_delay,
            coalescer=Coalescer(max_delay=cfg.coalesce_max_delay),
            fanout=services.fanout,
        )
        self.control: list[bytes] = []  # short-lived and small: a list is 10x lighter than a deque
        self.bad_frames: BadFrames | None = None
        self.backlog: deque[Backlogged] = NO_BACKLOG  # a deque of its own once needed
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
        self._nursery: trio.Nursery | None = None
        self._cancelled = False
        self._watching = False
        self._done = False
        self._ended: trio.Event | None = None  # made by the watchdog, which waits on it
        self.identity: Identity | None = None
        """Who the client is (None: the hub does not authenticate)."""
        self.expires = math.inf
        """When the link must end because its credential expired (plus the grace)."""
        self.limits: RateLimits | None = None
        """The rate limits it answers to (None: none)."""
        self.units = 0
        """Messages the frame being processed carried (for the rate limits)."""

    @property
    def max_frame(self) -> int:
        """The largest frame this link's client accepts."""
        return self.protocol.max_frame

    def committed(self, now: float) -> None:
        """Messages became sendable or acknowledgeable (:class:`LinkHandle`)."""
        self.protocol.released(now)
        self.set()

    def released(self, now: float) -> None:
        """Received messages were released: wake the writer if the ack is due now."""
        if self.protocol.released(now):
            self.set()

    def queue_control(self, frame: bytes) -> bool:
        """Queue a control frame for the writer; False when the queue is full."""
        if len(self.control) >= MAX_CONTROL_FRAMES:
            return False
        self.control.append(frame)
        self.set()
        return True

    def report(self, error: Error) -> None:
        """Send an error frame (best effort: dropped if the control queue is full)."""
        self.queue_control(self.codec.encode(error.wire()))

    def count_bad_frame(self, now: float) -> bool:
        """Record a malformed frame; True when the tolerated rate is exceeded."""
        if self.bad_frames is None:
            cfg = self.services.config
            self.bad_frames = BadFrames(cfg.max_bad_frames, cfg.bad_frame_window)
        return self.bad_frames.count(now)

    def close_soon(self, code: int, reason: str) -> None:
        """Detach from the session now and make the link close with ``code``.

        The link's tasks are cancelled; if they have not ended within
        ``close_timeout`` (a send blocked on a peer that does not read), the
        watchdog drops the socket.
        """
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._start_closing()
        if self.attached:
            self.session.detach(trio.current_time())
        self._cancel()
        self._watch()

    def _start_closing(self) -> None:
        """Start the link's one close clock: every later step keeps within it."""
        if self.transport.deadline == math.inf:
            self.transport.deadline = trio.current_time() + self.services.config.close_timeout

    # -- the backlog ------------------------------------------------------------

    def hold(self, frame: MessageFrame | None, start: int, size: int) -> None:
        """Put a frame (from body ``start`` on; None: ``bye``) behind those waiting."""
        if self.backlog is NO_BACKLOG:
            self.backlog = deque()
        self.backlog.append(Backlogged(frame, start, size))
        self.backlog_bytes += size
        if not self.routing and self._nursery is not None:
            self.routing = True
            self._nursery.start_soon(self._router)

    async def _router(self) -> None:
        """Route the backlog in order, waiting for room; ends when it is empty."""
        services = self.services
        backlog = self.backlog
        try:
            while backlog and self.attached:
                item = backlog[0]
                if item.frame is BYE:
                    services.say_bye(self)
                    return
                if not await services.route_held(self, item):
                    return
                backlog.popleft()
                self.backlog_bytes -= item.size
                self.drained.set()
        finally:
            self.routing = False

    # -- the link's tasks -------------------------------------------------------

    async def run(self) -> None:
        """Run the link's tasks until it ends (call :meth:`cleanup` after)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._cancelled:  # asked to close before it ran
                    nursery.cancel_scope.cancel()
                self.set()  # what is already waiting (a replay, error frames)
                try:
                    await self._reader()
                except BaseException:
                    self._watch()  # cancelled or failed: its end is bounded too
                    raise
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._done = True
            if self._ended is not None:
                self._ended.set()

    def _watch(self) -> None:
        """Start the watchdog (once, while the link runs): it must be gone within its
        close clock. A system task: an idle link keeps no task (or nursery) for it."""
        if not self._watching and self._nursery is not None and not self._done:
            self._watching = True
            self._ended = trio.Event()
            trio.lowlevel.spawn_system_task(self._watchdog, name="genesis_trio link watchdog")

    async def _watchdog(self) -> None:
        """Drop the socket if the link has not ended ``close_timeout`` after it had to."""
        with trio.CancelScope(shield=True):
            self._start_closing()
            ended = self._ended
            assert ended is not None
            with trio.move_on_at(self.transport.deadline):
                await ended.wait()
            if not ended.is_set():
                log.info("link of %s did not end in time: aborted", self.session.component_id)
                self.peer_closed = True
                try:  # a system task must not raise (it would end the whole run)
                    await self.transport.abort()
                except Exception:  # pragma: no cover - abort only closes a socket
                    log.exception("aborting the link of %s failed", self.session.component_id)

    async def cleanup(self) -> None:
        """Detach from the session and close the link, within the link's close clock."""
        if self.attached:
            self.session.detach(trio.current_time())
        self._start_closing()
        with trio.move_on_at(self.transport.deadline):
            await self._close_transport()

    async def _close_transport(self) -> None:
        if not self.peer_closed:
            code = self.close_code
            if code is None and self.crashed:
                code, self.close_reason = CloseCode.INTERNAL_ERROR, "internal error"
                self.close_code = code
            try:  # the error frames that explain the close go first (bounded by our caller)
                while self.control:
                    await self.transport.send(self.control.pop(0))
            except ConnectionClosed:
                pass
            await self.transport.close(
                code if code is not None else CloseCode.NORMAL, self.close_reason
            )

    async def _reader(self) -> None:
        receive = self.transport.receive
        services = self.services
        process = services.process
        counters = services.counters
        heartbeat = self.heartbeat
        cfg = services.config
        limit = cfg.max_backlog_bytes
        stall = cfg.slow_consumer_timeout
        limits = self.limits
        control = self.control
        while True:
            if len(control) >= CONTROL_HIGH_WATER:
                # Pongs and errors wait to be written: read nothing more until they
                # are (every ping is answered); a peer that does not read is slow.
                self.drained.clear()
                with trio.move_on_after(stall):
                    await self.drained.wait()
                if len(control) >= CONTROL_HIGH_WATER:
                    counters.slow_consumers_closed += 1
                    self.close_soon(CloseCode.SLOW_CONSUMER, "the client does not read")
                    return
                heartbeat.received(trio.current_time())
                continue
            if self.backlog_bytes > limit:
                # Backpressure: read nothing more until the router catches up. The
                # dead-peer clock stops meanwhile (nothing we do not read can count).
                self.drained.clear()
                await self.drained.wait(self.write_at)
                if self.drained.is_set:
                    heartbeat.received(trio.current_time())
                self.write_if_due(trio.current_time())
                continue
            deadline = min(
                heartbeat.deadline(), self.sending_since + stall, self.expires, self.write_at
            )
            with trio.move_on_at(deadline) as timer:
                self._timer = timer
                data = await receive()
            self._timer = None
            if timer.cancelled_caught:
                now = trio.current_time()
                if now >= self.expires:
                    self.close_soon(CloseCode.CREDENTIALS_EXPIRED, "the credential expired")
                    return
                if heartbeat.dead(now):
                    counters.heartbeat_timeouts += 1
                    self.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "no frame from the client in time")
                    return
                if now >= self.sending_since + stall:
                    counters.slow_consumers_closed += 1
                    self.close_soon(CloseCode.SLOW_CONSUMER, "the client does not read")
                    return
                self.write_if_due(now)
                continue
            if data is None:
                self.peer_closed = True
                return
            heartbeat.received(trio.current_time())
            self.units = 1
            process(data, self)
            if not self.attached:
                return
            if limits is not None:
                slowed = limits.throttled_since is not None
                pause = limits.pause(self.units, len(data), trio.current_time())
                if pause is None:
                    counters.floods_closed += 1
                    self.close_soon(CloseCode.POLICY_VIOLATION, "rate limit exceeded for too long")
                    return
                if pause:
                    counters.rate_limited += not slowed
                    # Read nothing meanwhile (the client is slowed down); write what falls due.
                    end = trio.current_time() + pause
                    while (now := trio.current_time()) < end:
                        await trio.sleep_until(min(end, self.write_at))
                        self.write_if_due(trio.current_time())
                    heartbeat.received(now)
