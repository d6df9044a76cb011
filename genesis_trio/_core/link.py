"""The protocol of one link as its writer sees it (sans-IO).

One :class:`LinkProtocol` per link and side -- the hub's and the client's
are the same class -- owns what leaves the link: which sequenced messages go
in the next frame (within the window, batched, under the peer's frame-size
cap), when an acknowledgement is due (riding on a delivery, or alone), and
how long the writer may sleep. The Trio shells move bytes and nothing else:
they call :meth:`LinkProtocol.poll` and write (or wait for) what it says.

The acknowledgement policy, in one place for both sides:

* what is released is acknowledged on the next ``msg``/``batch`` (piggy-back);
* alone, as soon as half the window is owed, or ``ack_delay`` after the
  first owed message, so a stream of messages costs one ack per delay;
* an *isolated* message (nothing else released in the ``ack_delay`` before
  it) is acknowledged at once: a peer that sends one message and waits for
  its acknowledgement pays no delay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

import attrs

from .coalesce import Coalescer, FanoutWindow
from .codec import JSON
from .frames import MessageFrame
from .session import Entry, InboundTracker, OutboundLog

T = TypeVar("T")


@attrs.frozen
class Deliver(Generic[T]):
    """Write a ``msg`` (one body) or ``batch`` frame."""

    seq: int
    """Sequence number of the first body."""
    entries: Sequence[Entry[T]]
    """The log entries carried (their payloads encoded in ``bodies``)."""
    bodies: list[bytes]
    """The encoded bodies, in order."""
    ack: int | None
    """An acknowledgement riding along, if one is owed."""
    oversized: bool
    """The first body alone exceeds the peer's frame cap (the shell decides what to send)."""
    first_size: int
    """The exact size of a ``msg`` frame carrying the first body alone."""

    @property
    def kind(self) -> str:
        """``"msg"`` or ``"batch"``."""
        return "msg" if len(self.bodies) == 1 else "batch"


@attrs.frozen
class SendAck:
    """Write a lone ``ack`` frame."""

    seq: int


@attrs.frozen
class Hold:
    """Sleep until ``until`` (a fan-out is probably still arriving), then poll again."""

    until: float


@attrs.frozen
class Yield:
    """Let one scheduler pass run (a batch is forming), then poll again."""


@attrs.frozen
class Idle:
    """Nothing to write: wait for a wake-up, or until ``until`` (an ack falls due)."""

    until: float


YIELD: Final = Yield()

Step = Deliver[T] | SendAck | Hold | Yield | Idle


class LinkProtocol(Generic[T]):
    """What to write next on one link; see the module docstring."""

    __slots__ = (
        "_held",
        "_last_release",
        "ack_deadline",
        "ack_delay",
        "coalescer",
        "encode",
        "fanout",
        "half",
        "inbound",
        "max_batch",
        "max_frame",
        "outbound",
        "overhead",
        "window",
    )

    def __init__(
        self,
        outbound: OutboundLog[T],
        inbound: InboundTracker,
        *,
        window: int,
        max_frame: int,
        encode: Callable[[T], bytes],
        overhead: Callable[[int, int | None, int], int] = JSON.overhead,
        max_batch: int = 512,
        ack_delay: float = 0.02,
        coalescer: Coalescer | None = None,
        fanout: FanoutWindow | None = None,
    ) -> None:
        self.outbound = outbound
        self.inbound = inbound
        self.window = window
        """Most messages in flight (sent, unacknowledged) towards the peer."""
        self.half = max(1, window // 2)
        self.max_frame = max_frame
        """The largest frame the peer accepts, in bytes."""
        self.encode = encode
        self.overhead = overhead
        """The codec's exact frame overhead (``Codec.overhead``): frames fit ``max_frame``."""
        self.max_batch = max_batch
        self.ack_delay = ack_delay
        self.coalescer = coalescer if coalescer is not None else Coalescer()
        self.fanout = fanout
        """Shared by every link of a hub: batches form after a wide fan-out."""
        self.ack_deadline = math.inf
        """When the owed acknowledgement must leave even alone (inf: none owed)."""
        self._last_release = -math.inf
        self._held = False

    @property
    def ack_owed(self) -> int:
        """Messages released but not yet acknowledged to the peer."""
        return self.inbound.released - self.inbound.acked

    def released(self, now: float) -> bool:
        """Messages were released (handed over, or stored): arm the acknowledgement.

        Returns True when the writer must wake now to send it (an isolated
        message, or half the window owed); otherwise it falls due at
        :attr:`ack_deadline`, which the writer's next :meth:`poll` reports.
        """
        owed = self.ack_owed
        if owed <= 0:
            return False
        isolated = now - self._last_release > self.ack_delay
        self._last_release = now
        if self.ack_deadline == math.inf:
            self.ack_deadline = now if isolated else now + self.ack_delay
            return True
        return owed >= self.half

    def _take_ack(self) -> int:
        self.ack_deadline = math.inf
        return self.inbound.take_ack()

    def _fit(self, seq: int, ack: int | None, bodies: list[bytes]) -> int:
        """How many leading bodies fit in one frame of at most ``max_frame`` bytes (>= 1)."""
        budget = self.max_frame
        overhead = self.overhead
        if overhead(seq, ack, len(bodies)) + sum(map(len, bodies)) <= budget:
            return len(bodies)  # all fit (the overhead grows with the count: so does every prefix)
        total = 0
        for i, body in enumerate(bodies):
            total += len(body)
            if i and overhead(seq, ack, i + 1) + total > budget:
                return i
        return len(bodies)

    def poll(self, now: float) -> Step[T]:
        """What the writer does next: deliver, acknowledge, hold, yield or idle."""
        out = self.outbound
        room = self.window - out.in_flight
        pending = min(out.last_seq, out.durable) - out.sent
        if pending > 0 and room > 0:
            fanout = self.fanout
            if (
                fanout is not None
                and not self._held
                and pending < self.max_batch
                and fanout.active(now)
            ):
                self._held = True  # once: the publisher's task is probably producing more
                return Hold(now + fanout.hold)
            self._held = False
            if self.coalescer.should_wait(now, out.last_seq, pending):
                return YIELD
            entries = out.take(min(room, self.max_batch))
            encode = self.encode
            bodies = [encode(entry.payload) for entry in entries]
            seq = entries[0].seq
            ack = self.inbound.released if self.ack_owed > 0 else None
            n = self._fit(seq, ack, bodies)
            if n < len(entries):  # the frame would exceed what the peer accepts
                out.untake(len(entries) - n)
                del entries[n:], bodies[n:]
            first = self.overhead(seq, ack, 1) + len(bodies[0])
            if ack is not None:
                self._take_ack()
            return Deliver(seq, entries, bodies, ack, first > self.max_frame, first)
        owed = self.ack_owed
        if owed > 0 and (now >= self.ack_deadline or owed >= self.half):
            return SendAck(self._take_ack())
        return Idle(self.ack_deadline if owed > 0 else math.inf)


class Backlogged:
    """A received ``msg``/``batch`` frame (or ``bye``) waiting in a hub link's backlog."""

    __slots__ = ("frame", "next", "size")

    def __init__(self, frame: MessageFrame | None, start: int, size: int) -> None:
        self.frame = frame
        """The frame; None stands for ``bye``."""
        self.next = start
        """Index of the next body to route."""
        self.size = size
        """Bytes the frame took on the wire (bounded per link)."""


BYE: Final = None
"""The backlog entry that stands for ``bye`` (ends the session after what came before)."""
