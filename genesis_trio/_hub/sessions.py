"""Hub-side sessions and the registry that resumes, replaces and expires them.

A :class:`HubSession` outlives its WebSocket links: it holds the outbound log
(what the component has not acknowledged yet) and the inbound tracker (what
the hub has processed from it). :class:`SessionTable` maps component ids,
session ids and topics to sessions; for each ``hello`` it finds, resumes
(the decision is the core's :func:`resume_session`), replaces or creates
the session, and it keeps every limit on sessions. Every change is told to a
:class:`SessionRecorder` (the journal). Synchronous; the only Trio objects
are the wake-up primitives the link tasks park on.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs
import trio

from .._core.codec import EncodedBody
from .._core.config import HubConfig
from .._core.frames import Hello
from .._core.session import InboundTracker, OutboundLog, new_session_id, resume_session
from ..stores import StoredState
from .handles import NO_ONE, LinkHandle, Wake

ANONYMOUS_PREFIX: Final = "anon-"  # also in stores/_cluster_lua.py (CLAIM)
"""Component ids the hub assigns to clients that send none (reserved: clients may not use it)."""


class SessionRecorder(Protocol):
    """Where session changes go (the journal; a null one without a store)."""

    @property
    def durable(self) -> bool:
        """True when messages may be sent only once stored (a session store is used)."""
        ...

    def touched(self, session: HubSession) -> None:
        """The session's header changed (received, topics, epoch)."""
        ...

    def appended(
        self, session: HubSession, seq: int, out: EncodedBody, stamp: float, shared: bool = False
    ) -> None:
        """A message entered the session's log (``shared``: several sessions got it)."""
        ...

    def acked(self, session: HubSession) -> None:
        """The session's log head moved (acknowledged or evicted)."""
        ...

    def rewritten(self, session: HubSession) -> None:
        """The session's log was renumbered (a new epoch)."""
        ...

    def deleted(self, session: HubSession) -> None:
        """The session is gone."""
        ...


class SessionObserver(Protocol):
    """Told when a session's presence changes (the hub's presence events)."""

    def joined(self, session: HubSession, resumed: bool) -> None:
        """A link attached (``resumed``: the session continued exactly)."""
        ...

    def went_away(self, session: HubSession) -> None:
        """The link went; the session waits for a resume."""
        ...

    def left(self, session: HubSession, reason: str) -> None:
        """The session ended (``bye``, ``replaced``, ``evicted``, ``expired``, ``forgotten``)."""
        ...


@attrs.define(eq=False)
class HubSession:
    """One component's session on the hub."""

    component_id: str
    sid: str
    epoch: int
    outbound: OutboundLog[EncodedBody]
    inbound: InboundTracker = attrs.field(factory=InboundTracker)
    topics: set[str] = attrs.field(factory=set)
    owner: str | None = None
    """The identity (subject) that owns it, when the hub authenticates."""
    connection: LinkHandle | None = None
    """The live link, if any."""
    connected_at: float | None = None
    """When the live link attached (Trio clock)."""
    disconnected_at: float | None = None
    wake: Wake = NO_ONE
    """Wakes whoever holds the session: set by the link (or local component) that
    attaches, back to :data:`NO_ONE` when it goes."""
    room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    """Senders waiting for room in :attr:`outbound`."""
    on_detach: Callable[[HubSession], None] | None = None
    """Told when the link goes (the table keeps disconnected sessions in order)."""
    retired: bool = False
    """Out of the table (ended, or handed to another node): the journal ignores it."""
    via_inbox: bool = False
    """In a cluster: its inbox holds messages not yet in its log, so every message to it
    goes through the inbox too (nothing overtakes them)."""

    @property
    def connected(self) -> bool:
        """True while a link is attached."""
        return self.connection is not None

    @property
    def anonymous(self) -> bool:
        """True for a session whose component id the hub assigned."""
        return self.component_id.startswith(ANONYMOUS_PREFIX)

    def attach(self, link: LinkHandle, now: float) -> None:
        """A link takes the session (after :meth:`SessionTable.open`)."""
        self.connection = link
        self.connected_at = now
        self.disconnected_at = None
        self.inbound.new_link()

    def detach(self, now: float) -> None:
        """The link is gone: keep the session for resume, free waiters."""
        self.connection = None
        self.wake = NO_ONE
        self.disconnected_at = now
        self.room.unpark_all()
        if self.on_detach is not None:
            self.on_detach(self)

    def release(self) -> None:
        """Let go of the link for another to take over at once (no presence change)."""
        self.connection = None
        self.wake = NO_ONE
        self.room.unpark_all()


@attrs.frozen
class Opened:
    """Outcome of :meth:`SessionTable.open`."""

    session: HubSession
    recovered: bool
    resumed: bool
    """True when the client asked to resume (sent a known or unknown sid)."""
    replaced: LinkHandle | None
    """A link that must be closed because this one took over."""
    carried_over: int
    """Unacknowledged messages moved from a replaced session into this one."""
    reason: str | None = None
    """Why a resume was not exact (``welcome.reason``), if it was asked for."""
    refused_topics: tuple[str, ...] = ()
    """Topics of the hello refused by the subscription limits."""


@attrs.define(eq=False)
class SessionTable:
    """Sessions by component id and session id, and topic subscriptions."""

    config: HubConfig
    recorder: SessionRecorder
    by_id: dict[str, HubSession] = attrs.field(factory=dict)
    by_sid: dict[str, HubSession] = attrs.field(factory=dict)
    subscribers: dict[str, set[HubSession]] = attrs.field(factory=dict)
    away: dict[str, HubSession] = attrs.field(factory=dict)
    """Disconnected named sessions by sid, longest-disconnected first."""
    away_anonymous: dict[str, HubSession] = attrs.field(factory=dict)
    """Disconnected anonymous sessions by sid, longest-disconnected first."""
    subscriptions: int = 0
    """Subscriptions held by all sessions (bounded by ``max_subscriptions``)."""
    observer: SessionObserver | None = None
    """Told of presence changes (the hub's presence)."""

    def __len__(self) -> int:
        return len(self.by_id)

    def _went_away(self, session: HubSession, notify: bool = True) -> None:
        if self.by_sid.get(session.sid) is not session:
            return
        away = self.away_anonymous if session.anonymous else self.away
        away.pop(session.sid, None)
        away[session.sid] = session
        if notify and self.observer is not None:
            self.observer.went_away(session)

    def joined(self, session: HubSession, resumed: bool) -> None:
        """A link attached to ``session`` (after :meth:`open`): tell the observer."""
        if self.observer is not None:
            self.observer.joined(session, resumed)

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
                self.remove(next(iter(away.values())), "evicted")
                return 1
        return None

    def _new(self, component_id: str, epoch: int = 1, sid: str | None = None) -> HubSession:
        cfg = self.config
        log_: OutboundLog[EncodedBody] = OutboundLog(
            capacity=cfg.retention_messages, max_bytes=cfg.retention_bytes
        )
        if self.recorder.durable:
            log_.durable = 0
        session = HubSession(component_id, sid or new_session_id(), epoch, log_)
        session.on_detach = self._went_away
        self.by_id[component_id] = session
        self.by_sid[session.sid] = session
        return session

    def load(self, state: StoredState, now: float, clock: Callable[[float], float]) -> int:
        """Rebuild sessions from the store (all disconnected as of ``now``); return the count.

        ``clock`` turns the store's wall-clock stamps into this process's Trio clock.
        """
        shared: dict[int, EncodedBody] = {}
        for stored in state.sessions:
            row = stored.row
            session = self._new(row.component_id, row.epoch, row.sid)
            session.owner = row.owner
            log_ = session.outbound
            # Appends do not rewrite the header: the newest seq is in the log itself.
            newest = stored.entries[-1].seq if stored.entries else 0
            log_.last_seq = max(row.last_seq, row.acked, newest)
            log_.acked, log_.truncated = row.acked, row.truncated
            for entry in stored.entries:
                if entry.seq <= row.acked:
                    continue
                if entry.body is not None:  # stored inline: this session's alone
                    out = EncodedBody(None, msgpack=entry.body)
                else:
                    found = shared.get(entry.msg_id)
                    if found is None:
                        body = state.messages.get(entry.msg_id)
                        if body is None:  # pragma: no cover - the store keeps referenced bodies
                            log_.truncated = True
                            continue
                        found = shared[entry.msg_id] = EncodedBody.stored(entry.msg_id, body)
                    out = found
                log_.restore(entry.seq, out, clock(entry.stamp), out.size)
            log_.sent = log_.acked
            log_.durable = log_.last_seq
            session.inbound.received = session.inbound.released = row.received
            session.inbound.acked = row.received
            self.subscribe(session, row.topics)
            session.disconnected_at = now
            self._went_away(session, notify=False)  # presence says "started" for them all
        return len(state.sessions)

    def owned_elsewhere(self, component_id: str, sid: str | None, owner: str) -> bool:
        """True when the session this hello would take belongs to another identity.

        A session with no owner (made while the hub did not authenticate) may
        be claimed.
        """
        for session in (self.by_id.get(component_id), self.by_sid.get(sid) if sid else None):
            if session is not None and session.owner not in (None, owner):
                return True
        return False

    def open(
        self, hello: Hello, now: float, owner: str | None = None, assigned: str | None = None
    ) -> Opened:
        """Find, resume or create the session a ``hello`` asks for (``owner``: its identity).

        ``assigned``: the id of a new anonymous session (a cluster claimed it).
        """
        cid = hello.id
        known = self.by_sid.get(hello.sid) if hello.sid is not None else None
        if (
            cid is not None
            and cid.startswith(ANONYMOUS_PREFIX)
            and (known is None or known.component_id != cid)
        ):
            cid = None  # reserved: only the session the hub named so may use it
        if cid is None:  # an anonymous client resumes by session id alone
            cid = known.component_id if known is not None and known.anonymous else None
        if cid is None:
            cid = assigned or ANONYMOUS_PREFIX + secrets.token_hex(6)
        existing = self.by_id.get(cid)
        if existing is not None and not existing.connected:
            self._expire_one(existing, now)
            existing = self.by_id.get(cid)
        resumed = hello.sid is not None
        recorder = self.recorder
        reason: str | None = "unknown" if resumed else None
        if existing is not None and hello.sid is not None and existing.sid == hello.sid:
            session = existing
            replaced = session.connection
            outcome = resume_session(session, hello)
            recovered, reason = outcome.recovered, outcome.reason
            if not recovered:
                recorder.rewritten(session)
            elif outcome.released:
                recorder.acked(session)
            carried = 0
        else:
            replaced = None
            carried_payloads: list[EncodedBody] = []
            if existing is not None:
                replaced = existing.connection
                carried_payloads = list(existing.outbound.payloads())
                self.remove(existing, "replaced")
            session = self._new(cid)
            for payload in carried_payloads:
                session.outbound.append_evicting(payload, now, payload.size)
            carried = len(carried_payloads)
            recovered = False
            recorder.rewritten(session)
        if replaced is not None and session is existing:
            session.release()  # the new link takes over at once
        if owner is not None and session.owner != owner:
            session.owner = owner
            recorder.touched(session)
        refused = self.set_topics(session, hello.topics)
        session.disconnected_at = None
        self._back(session)
        return Opened(session, recovered, resumed, replaced, carried, reason, refused)

    def remove(self, session: HubSession, reason: str = "bye") -> None:
        """Forget a session (``reason``: see :meth:`SessionObserver.left`)."""
        if self.by_sid.get(session.sid) is session and self.observer is not None:
            self.observer.left(session, reason)
        if self.by_id.get(session.component_id) is session:
            del self.by_id[session.component_id]
        self.by_sid.pop(session.sid, None)
        self._back(session)
        self.set_topics(session, ())
        session.room.unpark_all()
        self.recorder.deleted(session)
        session.retired = True

    def unload(self, session: HubSession) -> None:
        """Let go of a session another node takes over (nothing is deleted or recorded)."""
        if self.by_id.get(session.component_id) is session:
            del self.by_id[session.component_id]
        self.by_sid.pop(session.sid, None)
        self._back(session)
        for topic in session.topics:  # out of the index; its header keeps them (a pending
            subs = self.subscribers.get(topic)  # write must not drop its subscriptions)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self.subscribers[topic]
        self.subscriptions -= len(session.topics)
        session.retired = True
        session.room.unpark_all()

    def set_topics(self, session: HubSession, topics: Any) -> tuple[str, ...]:
        """Replace a session's subscriptions with ``topics``; return those refused (limits)."""
        wanted = set(topics)
        self.unsubscribe(session, session.topics - wanted)
        return self.subscribe(session, [t for t in topics if t not in session.topics])

    def subscribe(self, session: HubSession, topics: Any) -> tuple[str, ...]:
        """Add subscriptions; return the topics refused by the subscription limits."""
        changed = False
        refused: list[str] = []
        cfg = self.config
        for topic in topics:
            if topic in session.topics:
                continue
            if (
                len(session.topics) >= cfg.max_topics_per_session
                or self.subscriptions >= cfg.max_subscriptions
            ):
                refused.append(topic)
                continue
            self.subscribers.setdefault(topic, set()).add(session)
            session.topics.add(topic)
            self.subscriptions += 1
            changed = True
        if changed and session.sid in self.by_sid:
            self.recorder.touched(session)
        return tuple(refused)

    def unsubscribe(self, session: HubSession, topics: Any) -> None:
        """Remove subscriptions."""
        changed = False
        for topic in list(topics):
            if topic not in session.topics:
                continue
            subs = self.subscribers.get(topic)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self.subscribers[topic]
            session.topics.discard(topic)
            self.subscriptions -= 1
            changed = True
        if changed and session.sid in self.by_sid:
            self.recorder.touched(session)

    def _expire_one(self, session: HubSession, now: float) -> int:
        """Apply retention to a disconnected session; return messages dropped."""
        if session.disconnected_at is None:
            return 0
        cfg = self.config
        expiry = cfg.anonymous_session_expiry if session.anonymous else cfg.session_expiry
        if now - session.disconnected_at >= expiry:
            dropped = len(session.outbound)
            self.remove(session, "expired")
            return dropped
        dropped = session.outbound.expire(now - self.config.retention_seconds)
        if dropped:
            self.recorder.acked(session)
        return dropped

    def expire(self, now: float) -> tuple[int, int]:
        """Sweep disconnected sessions; return (sessions forgotten, messages dropped)."""
        before = len(self.by_id)
        dropped = 0
        for session in [*self.away_anonymous.values(), *self.away.values()]:
            dropped += self._expire_one(session, now)
        return before - len(self.by_id), dropped
