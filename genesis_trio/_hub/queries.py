"""The hub's read-side queries over its sessions (mixed into the hub): rows, topics, disconnect."""

from __future__ import annotations

import heapq
import time

import trio

from .._core.config import HubConfig
from .._core.errors import CloseCode, UnknownComponent
from .sessions import HubSession, SessionTable
from .stats import ComponentInfo


class Queries:
    """What operators and the HTTP API ask of the hub's sessions."""

    config: HubConfig
    sessions: SessionTable

    def components(
        self,
        *,
        topic: str | None = None,
        connected: bool | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ComponentInfo]:
        """One frozen row per session (connected or waiting for resume), by component id.

        Filters: subscribers of ``topic``, ``connected`` or not, ids after
        ``after``; at most ``limit`` rows (a page: go on from the last id).
        """
        table = self.sessions
        pool = table.subscribers.get(topic, ()) if topic is not None else table.by_id.values()
        ids = sorted(
            s.component_id
            for s in pool
            if (connected is None or s.connected == connected)
            and (after is None or s.component_id > after)
        )
        if limit is not None:
            ids = ids[: max(0, limit)]
        return [self._info(table.by_id[cid]) for cid in ids]

    def component(self, component_id: str) -> ComponentInfo:
        """The row of one session; :class:`UnknownComponent` if there is none."""
        session = self.sessions.by_id.get(component_id)
        if session is None:
            raise UnknownComponent(f"no component {component_id!r} on this hub")
        return self._info(session)

    def _info(self, session: HubSession) -> ComponentInfo:
        return ComponentInfo.of(session, self.config.node_id, trio.current_time(), time.time())

    def topics(self, *, after: str | None = None, limit: int | None = None) -> dict[str, int]:
        """Subscriber counts by topic, sorted by topic: the first ``limit`` after ``after``
        (one page: memory in proportion to the page, not to every topic)."""
        subscribers = self.sessions.subscribers
        names = subscribers if after is None else (t for t in subscribers if t > after)
        page = sorted(names) if limit is None else heapq.nsmallest(limit, names)
        return {topic: len(subscribers[topic]) for topic in page}

    def disconnect(self, component_id: str, *, forget: bool = False) -> bool:
        """Close the component's link (1000, it may resume); with ``forget``, end its session.

        Returns False when there was no link to close (and, with ``forget``,
        no session). :class:`UnknownComponent` when the hub holds no session.
        """
        session = self.sessions.by_id.get(component_id)
        if session is None:
            raise UnknownComponent(f"no component {component_id!r} on this hub")
        link = session.connection
        if link is not None:
            reason = "session ended by an operator" if forget else "disconnected by an operator"
            link.close_soon(CloseCode.NORMAL, reason)
        if forget:
            self.sessions.remove(session, "forgotten")
            return True
        return link is not None
