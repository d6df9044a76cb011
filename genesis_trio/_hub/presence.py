"""Presence: who is connected, told on the system topic ``$presence``.

The session table tells :class:`Presence` (a :class:`~.sessions.SessionObserver`)
whenever a link attaches or goes and whenever a session ends; each change
becomes a message ``{type: "presence", topic: "$presence", from: "$hub",
data: {event, id, node, at, ...}}`` routed like any other: appended to each
subscriber's session, so it is delivered exactly once, in order, across cut
links and (with a session store) hub restarts. Changes are queued (bounded)
and routed by one task, so the table's synchronous code never waits; with no
subscriber nothing is queued. :meth:`Presence.members` answers "who is on
this topic now" (the ``presence`` request to ``$hub``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from .._core.codec import EncodedBody
from .._core.frames import HUB_ID, PRESENCE_TOPIC, Body, valid_component_id, valid_subscription
from .sessions import HubSession, SessionTable

log = logging.getLogger("genesis_trio.hub")

QUEUE_SIZE: Final = 65_536
"""Presence changes waiting to be routed; past it they are dropped (and counted)."""
MAX_MEMBERS: Final = 1_000
"""Members one ``presence`` answer lists at most (the rest: page on with ``after``)."""


class PresenceEvent(enum.StrEnum):
    """What happened to a component (the ``event`` of a presence message)."""

    CONNECTED = "connected"
    """A link attached to a new session (or to one that could not continue exactly)."""
    RESUMED = "resumed"
    """A link attached to the component's session and continued it exactly."""
    DISCONNECTED = "disconnected"
    """The link went; the session waits for a resume (messages to it are kept)."""
    LEFT = "left"
    """The session ended (``reason``: ``bye``, ``replaced``, ``evicted``, ``forgotten``)."""
    EXPIRED = "expired"
    """The session was forgotten after its expiry, disconnected."""
    STARTED = "started"
    """A hub started (``node``): every session it holds is disconnected until resumed."""


class Presence:
    """Presence events on ``$presence`` and member lists (see the module docstring)."""

    def __init__(
        self,
        node: str,
        table: SessionTable,
        deliver: Callable[[EncodedBody], Awaitable[int]],
    ) -> None:
        self.node = node
        self.everywhere = False
        """In a cluster: subscribers on other nodes may be listening (always publish)."""
        self.table = table
        self._deliver = deliver
        self._send, self._receive = trio.open_memory_channel[Body](QUEUE_SIZE)
        self.dropped = 0
        """Changes dropped because the queue was full (subscribers far too slow)."""
        self.published = 0
        """Presence messages routed."""

    # -- SessionObserver ---------------------------------------------------------

    def joined(self, session: HubSession, resumed: bool) -> None:
        """A link attached."""
        event = PresenceEvent.RESUMED if resumed else PresenceEvent.CONNECTED
        self.emit(event, session, topics=sorted(session.topics))

    def went_away(self, session: HubSession) -> None:
        """The link went; the session stays."""
        self.emit(PresenceEvent.DISCONNECTED, session)

    def left(self, session: HubSession, reason: str) -> None:
        """The session ended."""
        if reason == "expired":
            self.emit(PresenceEvent.EXPIRED, session)
        else:
            self.emit(PresenceEvent.LEFT, session, reason=reason)

    # -- events -------------------------------------------------------------------

    def emit(self, event: PresenceEvent, session: HubSession | None = None, **extra: Any) -> None:
        """Queue one presence message (nothing when ``$presence`` has no subscriber)."""
        if not self.everywhere and not self.table.subscribers.get(PRESENCE_TOPIC):
            return
        data: dict[str, Any] = {"event": event.value, "node": self.node, "at": time.time()}
        if session is not None:
            data["id"] = session.component_id
        data.update(extra)
        body: Body = {"type": "presence", "topic": PRESENCE_TOPIC, "from": HUB_ID, "data": data}
        try:
            self._send.send_nowait(body)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("presence: %d changes dropped (subscribers too slow)", self.dropped)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Route queued changes to ``$presence``'s subscribers, in order, until cancelled."""
        task_status.started()
        async for body in self._receive:
            await self._deliver(EncodedBody(body))
            self.published += 1

    def flush(self, append: Callable[[Sequence[HubSession], EncodedBody], None]) -> int:
        """Append what is still queued at once (at shutdown: no waiting); return how many."""
        flushed = 0
        while True:
            try:
                body = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return flushed
            append(tuple(self.table.subscribers.get(PRESENCE_TOPIC, ())), EncodedBody(body))
            self.published += 1
            flushed += 1

    # -- queries ---------------------------------------------------------------------

    def members(self, topic: str, after: str | None = None, limit: int = MAX_MEMBERS) -> Body:
        """The sessions subscribed to ``topic``, by component id, one page.

        ``{"topic", "members": [{"id", "connected", "node"}], "next"}``; ``next``
        is the ``after`` of the next page (None on the last one).
        """
        if not valid_subscription(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        if after is not None and not valid_component_id(after):
            raise ValueError(f"invalid component id {after!r}")
        limit = max(1, min(limit, MAX_MEMBERS))
        ids = sorted(
            s.component_id
            for s in self.table.subscribers.get(topic, ())
            if after is None or s.component_id > after
        )
        page = ids[:limit]
        by_id = self.table.by_id
        members = [
            {"id": cid, "connected": by_id[cid].connected, "node": self.node} for cid in page
        ]
        return {"topic": topic, "members": members, "next": page[-1] if len(ids) > limit else None}
