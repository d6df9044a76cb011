"""Moving a cluster node's inboxes into its sessions' logs, in order, exactly once.

Two kinds of inbox hold what other nodes sent (docs/cluster.md):

* the **node's own** (:class:`~genesis_trio.stores._cluster.NodeInbox`): one
  entry per message and node, for a component or a topic; delivered to
  this node's sessions in one pass;
* a **component's own** (:class:`~genesis_trio.stores._cluster.Inbox`): what
  reached it while nobody held it, what a node that let it go had not
  delivered, and what could not be delivered at once. A session whose own
  inbox is not empty takes every message through it
  (:attr:`HubSession.via_inbox`: a *spill*), so nothing overtakes.

A pass reads both as of one moment, moves the components' inboxes first,
then the node's, and records how far each was moved (absolute positions)
in the same commit as the moved messages: retries move nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

import trio

from .._core.codec import EncodedBody
from .._core.errors import CloseCode
from .._core.frames import Body
from ..stores._cluster import ClusterStore, Inbox, NodeInbox
from ..stores._protocol import Forward
from .journal import Journal
from .sessions import HubSession, SessionTable

DRAIN_BATCH: Final = 256
"""Entries moved per component inbox per pass."""
DRAIN_ROUND: Final = 4096
"""Entries of the node's own inbox read per pass."""
DELIVERIES: Final = 16_384
"""Deliveries (appends to logs, spills) per pass at most: a publish to many subscribers
is many rows in the commit, which must stay small enough to be quick."""


class Appender(Protocol):
    """What draining needs of the router: append drained messages."""

    def blocks(self, target: HubSession) -> bool:
        """True when ``target`` is connected and its log full."""
        ...

    def append_all(self, targets: Sequence[HubSession], out: EncodedBody) -> None:
        """Append ``out`` to every target's log."""
        ...


class Drain:
    """A node's inboxes, moved into its sessions (see the module docstring)."""

    def __init__(self, store: ClusterStore, journal: Journal, table: SessionTable) -> None:
        self.store = store
        self.journal = journal
        self.table = table
        self.router: Appender | None = None
        """Set by the hub (appends drained messages)."""
        self.lock = trio.Lock()
        """Held while moving; and by whoever loads or lets go of a session meanwhile."""
        self.paused = 0
        """Claims between their claim and their load: the node's inbox waits (it may hold
        messages for the session not loaded yet)."""
        self.node_upto = 0
        """How far this node's own inbox was moved (absolute), committed or not."""
        self._upto: dict[str, tuple[str, int]] = {}
        """How far each component's inbox was moved (absolute), committed or not, and for
        which session (a new session of the component starts its inbox anew)."""
        self.since: dict[str, int] = {}
        """Components claimed here, with the end of this node's inbox at their claim: what
        it holds before that was not sent to them here (their own inbox has it)."""
        self._last_forward: dict[str, int] = {}
        """The journal generation of the last spill to each local ``via_inbox`` session."""
        self.drained = 0
        """Messages moved from inboxes into this node's sessions."""
        self.spilled = 0
        """Messages put behind a session's own inbox instead (slow readers, arrivals)."""
        self.gaps = 0
        """Inbox gaps found (a full inbox refused a publish): sessions marked truncated."""
        self.on_reply: Callable[[Body], None] | None = None
        """Takes replies to this node's own requests, answered on other nodes."""

    def noted(self, component_id: str) -> None:
        """A message for a local session went into its own inbox (in this commit)."""
        self._last_forward[component_id] = self.journal.generation

    def spill(self, session: HubSession, topic: str | None, packed: bytes) -> None:
        """Put a message behind what the session's own inbox holds (next commit)."""
        cid = session.component_id
        self.journal.forwarded(Forward(cid, topic, packed, spill=True))
        session.via_inbox = True
        self.noted(cid)
        self.spilled += 1

    def claimed(self, component_id: str, upto: int) -> None:
        """A component was claimed when this node's inbox ended at ``upto``."""
        if upto > self.node_upto:
            self.since[component_id] = upto

    def forget(self, component_id: str) -> None:
        """The session left this node: its next holder reads the store."""
        self._upto.pop(component_id, None)
        self._last_forward.pop(component_id, None)
        self.since.pop(component_id, None)

    def _truncated(self, session: HubSession) -> None:
        """A gap: the session's next resume says ``recovered: false``; a connected one
        is closed now (4004, as a slow consumer on one hub), so it learns at once."""
        session.outbound.truncated = True
        self.journal.touched(session)
        self.gaps += 1
        link = session.connection
        if link is not None:
            link.close_soon(CloseCode.SLOW_CONSUMER, "too far behind: messages were lost")

    def _move(
        self,
        session: HubSession,
        inbox: Inbox,
        read_at: int,
        shared: dict[bytes, EncodedBody],
        limit: int,
    ) -> tuple[bool, int]:
        """Append what the session has not had of its own inbox (up to ``limit``);
        (whether it was emptied, how many were appended)."""
        router = self.router
        assert router is not None
        cid = session.component_id
        journal = self.journal
        if inbox.gap is not None:  # a publish could not be put there: say so at resume
            self._truncated(session)
            journal.gap_seen(cid, inbox.gap)
        sid, upto = self._upto.get(cid, ("", 0))
        if sid != session.sid:
            upto = 0  # a new session: its inbox was deleted with the old one
        start = max(0, upto - inbox.head)
        bodies = inbox.bodies
        moved = start
        end = min(len(bodies), start + limit)
        while moved < end and not router.blocks(session):
            packed = bodies[moved]  # one publish to many here: decoded and encoded once
            out = shared.get(packed)
            if out is None:
                out = shared[packed] = EncodedBody(None, msgpack=packed)
            router.append_all((session,), out)
            moved += 1
        if moved > start:
            self._upto[cid] = (session.sid, inbox.head + moved)
            journal.consumed(cid, inbox.head + moved)
            self.drained += moved - start
        emptied = moved == len(bodies) < inbox.asked
        if not emptied:
            session.via_inbox = True
        elif session.via_inbox and self._last_forward.get(cid, 0) <= read_at:
            session.via_inbox = False  # every spill to it was in the store when it was read
            self._last_forward.pop(cid, None)
        return emptied, moved - start

    def _move_node(self, inbox: NodeInbox, shared: dict[bytes, EncodedBody], budget: int) -> bool:
        """Deliver this node's own inbox to its sessions (never waits; up to about
        ``budget`` deliveries); True if emptied."""
        router = self.router
        assert router is not None
        table, journal = self.table, self.journal
        for topic, gap in inbox.gaps.items():
            for session in table.subscribers.get(topic, ()):
                self._truncated(session)
            journal.gap_seen("#" + topic, gap)
        start = max(0, self.node_upto - inbox.head)
        entries = inbox.entries
        since = self.since
        moved = start
        for at, (kind, name, packed) in enumerate(entries[start:], inbox.head + start):
            if budget <= 0:
                break  # the rest in the next pass (its own commit)
            moved += 1
            if kind == "h":  # a reply to this node's hub (its request went elsewhere)
                if self.on_reply is not None:
                    self.on_reply(EncodedBody(None, msgpack=packed).body)
                continue
            if kind == "t":
                targets: Sequence[HubSession] = tuple(table.subscribers.get(name, ()))
            else:
                target = table.by_id.get(name)
                if target is None:  # not loaded: kept in its own inbox (the store checks
                    journal.forwarded(Forward(name, None, packed, spill=True))  # it is ours)
                    continue
                targets = (target,)
            now: list[HubSession] = []
            for session in targets:
                if since and at < since.get(session.component_id, -1):
                    continue  # sent before it was claimed here: its own inbox has it
                if session.via_inbox or router.blocks(session):
                    self.spill(session, name if kind == "t" else None, packed)
                else:
                    now.append(session)
            budget -= len(targets)
            if now:
                out = shared.get(packed)
                if out is None:
                    out = shared[packed] = EncodedBody(None, msgpack=packed)
                router.append_all(now, out)
                self.drained += len(now)
        if moved > start:
            self.node_upto = inbox.head + moved
            journal.consumed("", self.node_upto)
            for cid in [c for c, upto in since.items() if upto <= self.node_upto]:
                del since[cid]
        return moved == len(entries) < inbox.asked

    async def some(self, sessions: Sequence[HubSession], *, node: bool) -> bool:
        """One pass (the caller holds :attr:`lock`), then commit; True if all was emptied.

        ``sessions``: those whose own inboxes to read, with those marked dirty
        when ``node`` (then this node's own inbox too, unless a claim is
        between its claim and its load).
        """
        read_at = self.journal.committed_generation
        read_node = node and not self.paused
        inboxes, mine = await self.store.read(
            [s.component_id for s in sessions], DRAIN_BATCH, DRAIN_ROUND if read_node else 0
        )
        shared: dict[bytes, EncodedBody] = {}
        done = True
        try:
            table = self.table
            budget = DELIVERIES
            for inbox in inboxes:
                session = table.by_id.get(inbox.component_id)
                if session is not None:
                    emptied, moved = self._move(session, inbox, read_at, shared, budget)
                    budget -= moved
                    done = emptied and done
            if mine is not None:
                done = self._move_node(mine, shared, budget) and done
            elif node:
                done = False  # paused: not read
        finally:  # what was moved is committed before anything reads the inboxes again
            with trio.CancelScope(shield=True), trio.move_on_after(self.store.timeout * 2):
                await self.journal.wait_committed()
        for cid in [c for c in self._upto if c not in table.by_id]:
            del self._upto[cid]  # gone from here: its next holder reads the store
        return done

    async def round(self) -> bool:
        """One pass over this node's inboxes; True when nothing was left behind."""
        async with self.lock:
            via = [s for s in self.table.by_id.values() if s.via_inbox]
            return await self.some(via, node=True)
