"""A link's writer: a task only while the link has something to write.

Most links are idle most of the time, and a parked writer task (its
coroutine frames, cancel scopes and parking lot) was a third of what an idle
link cost. So the writer starts when something becomes sendable (the
session's wake-up is the link's :meth:`LinkWriter.set`), writes what the
link protocol says, lingers ``LINGER`` seconds for more (a link in steady
traffic keeps its writer, so request/response pays no task start per
message), and ends. What is due later (a delayed acknowledgement, the next
ping) is left to the link's reader, whose receive timer starts the writer
again then (:attr:`LinkWriter.write_at`).
"""

from __future__ import annotations

import math
from typing import Any, Final, Protocol, cast

import trio

from .._core.codec import Codec, EncodedBody
from .._core.errors import ConnectionClosed
from .._core.frames import Ack
from .._core.heartbeat import Heartbeat
from .._core.link import Deliver, Hold, Idle, LinkProtocol, SendAck
from .._runtime.signal import Signal
from .endpoint import ServerTransport
from .sessions import HubSession
from .stats import HubCounters

IDLE: Final = Signal()
"""The wake-up signal of links whose writer is not running (nobody waits on it)."""
LINGER: Final = 0.25
"""Seconds an idle writer waits for more before its task ends."""


class WriterServices(Protocol):
    """What the writer needs of the hub."""

    @property
    def counters(self) -> HubCounters:
        """The hub's counters."""
        ...

    def undeliverable(self, link: Any, out: EncodedBody, problem: int | Exception) -> bytes:
        """The notice replacing a message its client cannot receive."""
        ...


class LinkWriter:
    """The writer half of :class:`~genesis_trio._hub.link.HubLink` (a mixin)."""

    __slots__ = (
        "_cancelled",
        "_signal",
        "_timer",
        "_writing",
        "peer_closed",
        "sending_since",
        "write_at",
    )

    services: WriterServices
    session: HubSession
    transport: ServerTransport
    codec: Codec
    protocol: LinkProtocol[EncodedBody]
    heartbeat: Heartbeat
    control: list[bytes]
    drained: Signal
    sending_since: float
    peer_closed: bool
    write_at: float
    _signal: Signal
    _writing: bool
    _nursery: trio.Nursery | None
    _timer: trio.CancelScope | None

    @property
    def attached(self) -> bool:
        """True while this link is the session's live link."""
        return self.session.connection is cast(object, self)

    def set(self) -> None:
        """Something may be sendable (the session's wake-up): wake or start the writer."""
        if self._writing:
            self._signal.set()
        elif self._nursery is not None and self.attached:
            self._writing = True
            self._signal = Signal()
            self._nursery.start_soon(self._write_until_gone)

    def write_if_due(self, now: float) -> None:
        """The reader's clock: start the writer if what it left for later is due."""
        if now >= self.write_at:
            self.write_at = math.inf
            self.set()

    def _write_later(self, when: float) -> None:
        """The writer ends: the reader's clock must start it again at ``when``."""
        self.write_at = when
        timer = self._timer
        if timer is not None and when < timer.deadline:
            timer.deadline = when

    async def _write_until_gone(self) -> None:
        try:
            await self._writer()
        except ConnectionClosed:
            self.peer_closed = True
            self._cancel()

    def _cancel(self) -> None:
        """End the link's tasks (now, or as soon as they start)."""
        self._cancelled = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _send(self, data: bytes) -> None:
        self.sending_since = trio.current_time()
        await self.transport.send(data)
        self.sending_since = math.inf

    async def _writer(self) -> None:
        """Write what the link protocol says; control frames and pings first."""
        services = self.services
        counters = services.counters
        protocol = self.protocol
        codec = self.codec
        send = self._send
        heartbeat = self.heartbeat
        control = self.control
        signal = self._signal
        while self.attached:
            signal.clear()
            now = trio.current_time()
            if control:
                while control:
                    await send(control.pop(0))
                self.drained.set()
            ping = heartbeat.ping_due(now)
            if ping is not None:
                await send(codec.encode(ping.wire()))
            step = protocol.poll(now)
            if type(step) is Deliver:
                bodies = step.bodies
                if step.oversized:
                    out = step.entries[0].payload
                    bodies[0] = services.undeliverable(self, out, step.first_size)
                await send(codec.frame(step.kind, step.seq, bodies, step.ack))
                n = len(bodies)
                counters.messages_out += n
                counters.delivery_frames += 1
                counters.frame_messages.observe(n)
                counters.delivery_seconds.observe(trio.current_time() - step.entries[0].stamp, n)
            elif type(step) is SendAck:
                await send(codec.encode(Ack(step.seq).wire()))
            elif type(step) is Hold:
                await trio.sleep_until(step.until)
            elif type(step) is Idle:
                until = min(step.until, heartbeat.next_ping)
                linger = now + LINGER
                await signal.wait(min(until, linger))
                if not signal.is_set and until > linger:  # nothing came: end, for now
                    self._writing = False
                    self._signal = IDLE
                    self._write_later(until)
                    return
            else:  # Yield: a batch is forming
                await trio.lowlevel.checkpoint()
