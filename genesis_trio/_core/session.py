"""The session state machine: sequence numbers, acks, replay, dedupe (sans-IO).

A session spans many links (WebSocket connections). Per direction it keeps:

* :class:`OutboundLog` -- what we sent, numbered from 1, retained until the
  peer acknowledges it cumulatively; on a new link everything after the peer's
  acknowledgement is sent again (replay);
* :class:`InboundTracker` -- the highest contiguous sequence number received
  (everything at or below it is a duplicate) and the highest *released* one
  (handed to the application, or stored durably by the hub), which is what
  we acknowledge.

:class:`ClientSession` adds the client half of the hello/welcome handshake.
Nothing here does I/O or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

import attrs

from .errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from .frames import Hello, Welcome

T = TypeVar("T")

UNBOUNDED = 1 << 62
"""``OutboundLog.durable`` when there is no store to wait for."""


def new_session_id() -> str:
    """A fresh unguessable session id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def _violation(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        message, code=ErrorCode.SEQUENCE, close_code=CloseCode.SESSION_VIOLATION
    )


@attrs.define(eq=False, slots=True)
class Entry(Generic[T]):
    """One retained outbound message."""

    seq: int
    payload: T
    stamp: float
    """When it was appended (the caller's clock)."""
    size: int = 0
    """Its size in bytes (counted against ``OutboundLog.max_bytes``)."""


class _NoEntries(deque[Any]):
    """The entries of every empty log, shared: reading works, adding is a bug.

    An empty ``deque`` holds a 64-slot block (~0.6 KiB): most sessions are
    idle with nothing retained, so a log allocates its own only while it
    retains something (:meth:`OutboundLog.append_unchecked`).
    """

    __slots__ = ()

    def append(self, _: object) -> None:
        raise AssertionError("the shared empty entries must never be added to")

    appendleft = append


NO_ENTRIES: deque[Any] = _NoEntries()
"""The shared, always empty ``OutboundLog.entries`` (see :class:`_NoEntries`)."""


@attrs.define(eq=False)
class OutboundLog(Generic[T]):
    """Sequenced outbound messages, retained until the peer acknowledges them.

    ``capacity`` bounds the number retained and ``max_bytes`` their total
    size; callers wait for room (:attr:`has_room`) or, for a peer that is
    away, drop the oldest with :meth:`append_evicting`, which marks the log
    :attr:`truncated`.
    """

    capacity: int
    max_bytes: int = UNBOUNDED
    """Bound on the total ``size`` of retained messages (one message may exceed it alone)."""
    size: int = 0
    """Total ``size`` of the retained messages."""
    entries: deque[Entry[T]] = NO_ENTRIES
    """Retained messages, oldest first (:data:`NO_ENTRIES` while there are none)."""
    last_seq: int = 0
    """The sequence number of the newest message (0: none yet)."""
    acked: int = 0
    """The peer's cumulative acknowledgement."""
    sent: int = 0
    """The newest sequence number handed to the current link."""
    high_sent: int = 0
    """The newest sequence number handed to any link in this epoch (acks may reach it)."""
    truncated: bool = False
    """True once unacknowledged messages were dropped (a gap for the peer)."""
    durable: int = UNBOUNDED
    """Highest sequence number safely stored; nothing beyond it may be sent."""

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def has_room(self) -> bool:
        """True when one more message fits within ``capacity`` and ``max_bytes``."""
        return len(self.entries) < self.capacity and self.size < self.max_bytes

    @property
    def unsent(self) -> int:
        """How many retained messages the current link has not carried yet."""
        return self.last_seq - self.sent

    @property
    def in_flight(self) -> int:
        """Sent on the current link but not yet acknowledged."""
        return self.sent - self.acked

    def append(self, payload: T, now: float, size: int = 0) -> int:
        """Number and retain ``payload``; the log must have room."""
        if not self.has_room:
            raise LocalProtocolError("outbound log is full; wait for room first")
        return self.append_unchecked(payload, now, size)

    def append_unchecked(self, payload: T, now: float, size: int = 0) -> int:
        """Number and retain ``payload`` whether or not it fits (the caller decided)."""
        self.last_seq += 1
        entries = self.entries
        if entries is NO_ENTRIES:
            self.entries = entries = deque()
        entries.append(Entry(self.last_seq, payload, now, size))
        self.size += size
        return self.last_seq

    def restore(self, seq: int, payload: T, stamp: float, size: int = 0) -> None:
        """Put back an entry loaded from a store (numbered already, in order)."""
        entries = self.entries
        if entries is NO_ENTRIES:
            self.entries = entries = deque()
        entries.append(Entry(seq, payload, stamp, size))
        self.size += size

    def append_evicting(self, payload: T, now: float, size: int = 0) -> tuple[int, int]:
        """Append, dropping the oldest messages to make room; returns (seq, dropped)."""
        dropped = 0
        entries = self.entries
        while entries and (len(entries) >= self.capacity or self.size + size > self.max_bytes):
            self._drop_oldest()
            dropped += 1
        return self.append_unchecked(payload, now, size), dropped

    def _drop_oldest(self) -> None:
        entry = self.entries.popleft()
        self.size -= entry.size
        self.acked = max(self.acked, entry.seq)
        self.sent = max(self.sent, entry.seq)
        self.truncated = True

    def shed(self, nbytes: int) -> tuple[int, int]:
        """Drop the oldest messages until ``nbytes`` are freed (or none is left), as
        retention does; return (messages dropped, bytes freed)."""
        dropped = freed = 0
        while self.entries and freed < nbytes:
            freed += self.entries[0].size
            self._drop_oldest()
            dropped += 1
        return dropped, freed

    def expire(self, cutoff: float) -> int:
        """Drop unacknowledged messages stamped before ``cutoff``; count them."""
        dropped = 0
        while self.entries and self.entries[0].stamp < cutoff:
            self._drop_oldest()
            dropped += 1
        return dropped

    def ack(self, seq: int, *, sent_only: bool = False) -> int:
        """Apply a cumulative acknowledgement; return how many were released.

        ``sent_only``: an ack on a live link may not exceed what this side has
        ever sent in this epoch, on this link or an earlier one (resume acks,
        from ``hello``/``welcome``, may reach ``last_seq``).
        """
        limit = max(self.sent, self.high_sent) if sent_only else self.last_seq
        if seq > limit:
            raise _violation(f"ack {seq} is beyond the newest message sent ({limit})")
        if seq <= self.acked:
            return 0
        entries = self.entries
        released = 0
        if entries:
            released = min(len(entries), seq - entries[0].seq + 1)
            if released == len(entries):
                self.entries = NO_ENTRIES  # its block goes back (an idle log holds none)
                self.size = 0
            else:
                popleft = entries.popleft
                freed = 0
                for _ in range(released):
                    freed += popleft().size
                self.size -= freed
        self.acked = seq
        if self.sent < seq:
            self.sent = seq
        return released

    def take(self, limit: int) -> list[Entry[T]]:
        """Take up to ``limit`` unsent messages, in order, and mark them sent."""
        n = min(limit, min(self.last_seq, self.durable) - self.sent)
        if n <= 0:
            return []
        start = self.sent - self.entries[0].seq + 1
        if start == 0 and n == len(self.entries):
            out = list(self.entries)
        else:
            out = [self.entries[start + i] for i in range(n)]
        self.sent += n
        return out

    def untake(self, count: int) -> None:
        """Give back the last ``count`` taken messages (they did not fit the frame)."""
        self.sent -= count

    def rewind(self) -> None:
        """A new link starts: everything unacknowledged is to be sent again."""
        self.high_sent = max(self.high_sent, self.sent)
        self.sent = self.acked

    def renumber(self) -> None:
        """Start a new epoch: keep unacknowledged payloads, number them from 1."""
        for i, entry in enumerate(self.entries, start=1):
            entry.seq = i
        self.last_seq = len(self.entries)
        self.acked = self.sent = self.high_sent = 0
        self.truncated = False

    def payloads(self) -> Iterable[T]:
        """The retained (unacknowledged) payloads, oldest first."""
        return (entry.payload for entry in self.entries)


@attrs.define(eq=False)
class InboundTracker:
    """Inbound sequence numbers: duplicate suppression and what to acknowledge."""

    received: int = 0
    """Highest contiguous sequence number received and processed (older ones are duplicates)."""
    released: int = 0
    """Highest sequence number released (delivered or stored): what we ack."""
    acked: int = 0
    """The last acknowledgement we sent the peer."""
    admitted: int = 0
    """Highest sequence number admitted for processing (>= ``received``; see :meth:`admit`)."""

    def accept(self, seq: int, count: int = 1) -> int:
        """Accept and process messages ``seq .. seq+count-1``; return how many to skip.

        Returns ``count`` when all are duplicates. A gap (``seq`` beyond
        ``received + 1``) is the peer's protocol violation.
        """
        if seq > self.received + 1:
            raise _violation(f"sequence gap: expected {self.received + 1}, got {seq}")
        skip = min(count, self.received + 1 - seq)
        self.received = max(self.received, seq + count - 1)
        self.admitted = max(self.admitted, self.received)
        return skip

    def admit(self, seq: int, count: int, window: int) -> int:
        """Admit ``seq .. seq+count-1`` for processing later; return how many to skip.

        For a receiver that processes messages one by one, some of them after
        a wait (the hub): :meth:`processed` records each. A gap beyond what
        was admitted, or a message beyond ``window`` unacknowledged ones
        (counted from our last acknowledgement), is the peer's violation.
        """
        if seq > self.admitted + 1:
            raise _violation(f"sequence gap: expected {self.admitted + 1}, got {seq}")
        last = seq + count - 1
        if last > self.acked + window:
            raise _violation(
                f"message {last} exceeds the window: at most {window} may be unacknowledged "
                f"and the last acknowledgement was {self.acked}"
            )
        skip = min(count, self.admitted + 1 - seq)
        if last > self.admitted:
            self.admitted = last
        return skip

    def processed(self, seq: int) -> None:
        """Admitted message ``seq`` (the next one) has been processed."""
        self.received = seq

    def new_link(self) -> None:
        """A new link starts: what was admitted but not processed will be sent again."""
        self.admitted = self.received
        self.acked = self.released

    def release(self, seq: int) -> None:
        """Mark everything up to ``seq`` as released (it may now be acknowledged)."""
        if seq > self.received:
            raise LocalProtocolError(f"cannot release {seq}: only {self.received} received")
        if seq > self.released:
            self.released = seq

    def take_ack(self) -> int:
        """Record that an acknowledgement is being sent; return its value."""
        self.acked = self.released
        return self.released

    def reset(self) -> None:
        """Start a new epoch: sequence numbers begin again at 1."""
        self.received = self.released = self.acked = self.admitted = 0


@attrs.frozen
class ResumeResult:
    """What a welcome meant for the client's session."""

    recovered: bool
    """True: the session continued exactly; False: a new epoch began."""
    replay: int
    """How many of our unacknowledged messages will be sent again."""
    first_connect: bool
    """True for the session's very first welcome."""


class ResumableSession(Protocol):
    """What :func:`resume_session` reads and changes: the hub's state of a session."""

    epoch: int
    outbound: OutboundLog[Any]
    inbound: InboundTracker


@attrs.frozen
class HubResume:
    """The hub's answer to a ``hello`` that names a session it holds."""

    recovered: bool
    """True: the session continues exactly; False: a new epoch began."""
    reason: str | None
    """Why it could not continue (``welcome.reason``): ``epoch``, ``truncated`` or ``ack``."""
    released: int
    """Outbound messages that ``hello.ack`` acknowledged (dropped from the log)."""


def resume_session(session: ResumableSession, hello: Hello) -> HubResume:
    """The hub's half of the resume handshake (the client's is :meth:`ClientSession.welcome`).

    The session continues exactly when the hello names its current epoch,
    retention dropped nothing the client had not acknowledged, and
    ``hello.ack`` is a number the hub sent. An ack below one already
    received is stale and ignored (acks never go backwards); one above the
    newest message sent is impossible and costs a new epoch (``reason="ack"``).
    On a new epoch both streams restart at 1 and the unacknowledged outbound
    messages are renumbered, to be delivered again.
    """
    log = session.outbound
    reason = None
    if hello.epoch != session.epoch:
        reason = "epoch"
    elif log.truncated:
        reason = "truncated"
    elif hello.ack > log.last_seq:
        reason = "ack"
    if reason is None:
        released = log.ack(max(hello.ack, log.acked))
        log.rewind()
        return HubResume(True, None, released)
    session.epoch += 1
    log.renumber()
    session.inbound.reset()
    return HubResume(False, reason, 0)


@attrs.define(eq=False)
class ClientSession(Generic[T]):
    """The client's half of a session, spanning reconnects."""

    component_id: str | None
    outbound: OutboundLog[T]
    inbound: InboundTracker = attrs.field(factory=InboundTracker)
    sid: str | None = None
    epoch: int = 0
    topics: set[str] = attrs.field(factory=set)

    def hello(self, token: str | None = None, max_size: int | None = None) -> Hello:
        """The hello frame for a new link: who we are and what we have."""
        return Hello(
            id=self.component_id,
            sid=self.sid,
            epoch=self.epoch,
            ack=self.inbound.received,
            topics=tuple(sorted(self.topics)),
            token=token,
            max_size=max_size,
        )

    def welcome(self, w: Welcome) -> ResumeResult:
        """Apply the hub's welcome; after it, :meth:`OutboundLog.take` replays."""
        first = self.sid is None
        same = w.sid == self.sid and w.epoch == self.epoch
        if w.recovered and not same:
            raise _violation("welcome claims recovery of a session we do not hold")
        if self.component_id is not None and w.id != self.component_id:
            raise _violation(f"welcome names component {w.id!r}, we are {self.component_id!r}")
        self.component_id = w.id
        if w.recovered:
            self.outbound.ack(w.ack)
            self.outbound.rewind()
        else:
            self.sid, self.epoch = w.sid, w.epoch
            self.inbound.reset()
            self.outbound.renumber()
        return ResumeResult(w.recovered, self.outbound.unsent, first)
