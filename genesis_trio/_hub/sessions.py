"""Hub-side sessions and the registry that resumes, replaces and expires them.

A :class:`HubSession` outlives its WebSocket connections: it holds the
outbound log (what the component has not acknowledged yet) and the inbound
tracker (what the hub has processed from it). :class:`SessionTable` maps
component ids, session ids and topics to sessions and decides, for each
``hello``, whether the session resumes exactly (``recovered``) or starts a new
epoch. Plain data and synchronous logic; the only Trio objects are the
wake-up primitives the connection tasks park on.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._core.codec import MSGPACK, Codec
from .._core.config import HubConfig
from .._core.frames import Body, Hello
from .._core.session import Entry, InboundTracker, OutboundLog, new_session_id
from .._runtime.signal import Signal
from ..stores._protocol import StoredState

if TYPE_CHECKING:
    from .journal import Journal
    from .link import HubConnection

ANONYMOUS_PREFIX: Final = "anon-"
"""Component ids the hub assigns to clients that send none (reserved: clients may not use it)."""


class Outgoing:
    """A message body, encoded at most once per codec however many receive it."""

    __slots__ = ("_body", "_size", "json", "msg_id", "msgpack")

    def __init__(self, body: Body | None, *, msgpack: bytes | None = None) -> None:
        self._body = body
        self.json: bytes | None = None
        self.msgpack: bytes | None = msgpack
        self.msg_id: int | None = None
        """The id under which the session store keeps the body (once stored)."""
        self._size = -1

    @property
    def size(self) -> int:
        """Its encoded size in bytes (MessagePack, which the store keeps too)."""
        if self._size < 0:
            self._size = len(self.encoded(MSGPACK))
        return self._size

    @classmethod
    def stored(cls, msg_id: int, msgpack: bytes) -> Outgoing:
        """A body loaded from the session store (decoded only if a JSON client needs it)."""
        out = cls(None, msgpack=msgpack)
        out.msg_id = msg_id
        return out

    @property
    def body(self) -> Body:
        """The body as a map."""
        if self._body is None:
            assert self.msgpack is not None
            self._body = MSGPACK.decode(self.msgpack)
        return self._body

    def encoded(self, codec: Codec) -> bytes:
        """The body in ``codec``'s encoding (cached)."""
        if codec.name == "json":
            if self.json is None:
                self.json = codec.encode(self.body)
            return self.json
        if self.msgpack is None:
            self.msgpack = codec.encode(self.body)
        return self.msgpack


@attrs.define(eq=False)
class HubSession:
    """One component's session on the hub."""

    component_id: str
    sid: str
    epoch: int
    outbound: OutboundLog[Outgoing]
    inbound: InboundTracker = attrs.field(factory=InboundTracker)
    topics: set[str] = attrs.field(factory=set)
    connection: HubConnection | None = None
    disconnected_at: float | None = None
    wake: Signal = attrs.field(factory=Signal)
    """Wakes the writer of the attached connection."""
    room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    """Senders waiting for room in :attr:`outbound`."""
    ack_deadline: float = math.inf
    """When the pending acknowledgement must leave even without a frame to ride on."""
    on_detach: Callable[[HubSession], None] | None = None
    """Told when the connection goes (the table keeps disconnected sessions in order)."""

    @property
    def connected(self) -> bool:
        """True while a connection is attached."""
        return self.connection is not None

    @property
    def anonymous(self) -> bool:
        """True for a session whose component id the hub assigned."""
        return self.component_id.startswith(ANONYMOUS_PREFIX)

    def detach(self, now: float) -> None:
        """The connection is gone: keep the session for resume, free waiters."""
        self.connection = None
        self.disconnected_at = now
        self.ack_deadline = math.inf
        self.room.unpark_all()
        if self.on_detach is not None:
            self.on_detach(self)


@attrs.frozen
class Opened:
    """Outcome of :meth:`SessionTable.open`."""

    session: HubSession
    recovered: bool
    resumed: bool
    """True when the client asked to resume (sent a known or unknown sid)."""
    replaced: HubConnection | None
    """A connection that must be closed because this one took over."""
    carried_over: int
    """Unacknowledged messages moved from a replaced session into this one."""


@attrs.define(eq=False)
class SessionTable:
    """Sessions by component id and session id, and topic subscriptions."""

    config: HubConfig
    journal: Journal | None = None
    by_id: dict[str, HubSession] = attrs.field(factory=dict)
    by_sid: dict[str, HubSession] = attrs.field(factory=dict)
    subscribers: dict[str, set[HubSession]] = attrs.field(factory=dict)
    away: dict[str, HubSession] = attrs.field(factory=dict)
    """Disconnected named sessions by sid, longest-disconnected first."""
    away_anonymous: dict[str, HubSession] = attrs.field(factory=dict)
    """Disconnected anonymous sessions by sid, longest-disconnected first."""

    def __len__(self) -> int:
        return len(self.by_id)

    def _went_away(self, session: HubSession) -> None:
        if self.by_sid.get(session.sid) is not session:
            return
        away = self.away_anonymous if session.anonymous else self.away
        away.pop(session.sid, None)
        away[session.sid] = session

    def _back(self, session: HubSession) -> None:
        (self.away_anonymous if session.anonymous else self.away).pop(session.sid, None)

    def make_room(self, hello: Hello, now: float) -> int | None:
        """Before :meth:`open`: make sure a session fits under ``max_sessions``.

        Returns how many sessions were forgotten to make room (the longest
        disconnected, anonymous ones first), or None when every session is
        connected and the hello must be refused.
        """
        if len(self.by_id) < self.config.max_sessions:
            return 0
        if hello.sid is not None and hello.sid in self.by_sid:
            return 0  # a resume: no new session
        if hello.id is not None and hello.id in self.by_id:
            return 0  # a replacement: one session out, one in
        for away in (self.away_anonymous, self.away):
            if away:
                self.remove(next(iter(away.values())))
                return 1
        return None

    def _new(self, component_id: str, epoch: int = 1, sid: str | None = None) -> HubSession:
        cfg = self.config
        log_: OutboundLog[Outgoing] = OutboundLog(
            capacity=cfg.retention_messages, max_bytes=cfg.retention_bytes
        )
        if self.journal is not None:
            log_.durable = 0
        session = HubSession(component_id, sid or new_session_id(), epoch, log_)
        session.on_detach = self._went_away
        self.by_id[component_id] = session
        self.by_sid[session.sid] = session
        return session

    def load(self, state: StoredState, now: float) -> int:
        """Rebuild sessions from the store (all disconnected as of ``now``); return the count."""
        assert self.journal is not None
        journal = self.journal
        shared: dict[int, Outgoing] = {}
        for stored in state.sessions:
            row = stored.row
            session = self._new(row.component_id, row.epoch, row.sid)
            log_ = session.outbound
            # Appends do not rewrite the header: the newest seq is in the log itself.
            newest = stored.entries[-1].seq if stored.entries else 0
            log_.last_seq = max(row.last_seq, row.acked, newest)
            log_.acked, log_.truncated = row.acked, row.truncated
            for entry in stored.entries:
                if entry.seq <= row.acked:
                    continue
                if entry.body is not None:  # stored inline: this session's alone
                    mine = Outgoing(None, msgpack=entry.body)
                    stamp = journal.trio_time(entry.stamp)
                    log_.entries.append(Entry(entry.seq, mine, stamp, mine.size))
                    log_.size += mine.size
                    continue
                out = shared.get(entry.msg_id)
                if out is None:
                    body = state.messages.get(entry.msg_id)
                    if body is None:  # pragma: no cover - the store keeps referenced bodies
                        log_.truncated = True
                        continue
                    out = shared[entry.msg_id] = Outgoing.stored(entry.msg_id, body)
                log_.entries.append(Entry(entry.seq, out, journal.trio_time(entry.stamp), out.size))
                log_.size += out.size
            log_.sent = log_.acked
            log_.durable = log_.last_seq
            session.inbound.received = session.inbound.released = row.received
            session.inbound.acked = row.received
            self.subscribe(session, row.topics)
            session.disconnected_at = now
            self._went_away(session)
        journal.start_ids_after(max(state.messages, default=0))
        return len(state.sessions)

    def open(self, hello: Hello, now: float) -> Opened:
        """Find, resume or create the session a ``hello`` asks for."""
        cid = hello.id
        if cid is not None and cid.startswith(ANONYMOUS_PREFIX):
            known = self.by_sid.get(hello.sid) if hello.sid is not None else None
            if known is None or known.component_id != cid:
                cid = None  # reserved: only the session the hub named so may use it
        if cid is None:  # an anonymous client resumes by session id alone
            known = self.by_sid.get(hello.sid) if hello.sid is not None else None
            cid = (
                known.component_id if known is not None else ANONYMOUS_PREFIX + secrets.token_hex(6)
            )
        existing = self.by_id.get(cid)
        if existing is not None and not existing.connected:
            self._expire_one(existing, now)
            existing = self.by_id.get(cid)
        resumed = hello.sid is not None
        if existing is not None and hello.sid is not None and existing.sid == hello.sid:
            session = existing
            log = session.outbound
            replaced = session.connection
            recovered = (
                hello.epoch == session.epoch
                and not log.truncated
                and log.acked <= hello.ack <= log.last_seq
            )
            if recovered:
                if log.ack(hello.ack) and self.journal is not None:
                    self.journal.acked(session)
                log.rewind()
            else:
                session.epoch += 1
                log.renumber()
                session.inbound.reset()
                if self.journal is not None:
                    self.journal.rewritten(session)
            carried = 0
        else:
            replaced = None
            carried_payloads: list[Outgoing] = []
            if existing is not None:
                replaced = existing.connection
                carried_payloads = list(existing.outbound.payloads())
                self.remove(existing)
            session = self._new(cid)
            for payload in carried_payloads:
                session.outbound.append_evicting(payload, now, payload.size)
            carried = len(carried_payloads)
            recovered = False
            if self.journal is not None:
                self.journal.rewritten(session)
        if replaced is not None:
            session.detach(now)
        self.set_topics(session, hello.topics)
        session.disconnected_at = None
        self._back(session)
        return Opened(session, recovered, resumed, replaced, carried)

    def remove(self, session: HubSession) -> None:
        """Forget a session (``bye``, replacement or expiry)."""
        if self.by_id.get(session.component_id) is session:
            del self.by_id[session.component_id]
        self.by_sid.pop(session.sid, None)
        self._back(session)
        self.set_topics(session, ())
        session.room.unpark_all()
        if self.journal is not None:
            self.journal.deleted(session)

    def set_topics(self, session: HubSession, topics: Any) -> None:
        """Replace a session's subscriptions with ``topics``."""
        wanted = set(topics)
        self.unsubscribe(session, session.topics - wanted)
        self.subscribe(session, wanted - session.topics)

    def subscribe(self, session: HubSession, topics: Any) -> None:
        """Add subscriptions."""
        changed = False
        for topic in topics:
            self.subscribers.setdefault(topic, set()).add(session)
            if topic not in session.topics:
                session.topics.add(topic)
                changed = True
        if changed and self.journal is not None and session.sid in self.by_sid:
            self.journal.touched(session)

    def unsubscribe(self, session: HubSession, topics: Any) -> None:
        """Remove subscriptions."""
        changed = False
        for topic in list(topics):
            subs = self.subscribers.get(topic)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self.subscribers[topic]
            if topic in session.topics:
                session.topics.discard(topic)
                changed = True
        if changed and self.journal is not None and session.sid in self.by_sid:
            self.journal.touched(session)

    def _expire_one(self, session: HubSession, now: float) -> int:
        """Apply retention to a disconnected session; return messages dropped."""
        if session.disconnected_at is None:
            return 0
        cfg = self.config
        expiry = cfg.anonymous_session_expiry if session.anonymous else cfg.session_expiry
        if now - session.disconnected_at >= expiry:
            dropped = len(session.outbound)
            self.remove(session)
            return dropped
        dropped = session.outbound.expire(now - self.config.retention_seconds)
        if dropped and self.journal is not None:
            self.journal.acked(session)
        return dropped

    def expire(self, now: float) -> tuple[int, int]:
        """Sweep disconnected sessions; return (sessions forgotten, messages dropped)."""
        before = len(self.by_id)
        dropped = 0
        for session in [*self.away_anonymous.values(), *self.away.values()]:
            dropped += self._expire_one(session, now)
        return before - len(self.by_id), dropped
