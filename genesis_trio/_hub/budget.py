"""The hub-wide bound on retained messages (``max_retained_bytes``).

Each session's log is bounded (``retention_messages``, ``retention_bytes``),
but nothing else bounded their sum: one client could create many sessions,
leave them, and fill each one with messages of its own until the hub ran
out of memory. :class:`RetentionBudget` keeps the sum of every session's
retained bytes (counted as ``retention_bytes`` counts them) under
``max_retained_bytes``: past it, the sessions disconnected longest
(anonymous ones first, as ``max_sessions`` forgets them) lose their oldest
messages, exactly as retention drops them (the next resume says
``recovered: false``). If that is not enough (connected clients that read
but never acknowledge can each hold up to ``retention_bytes``), the
connected sessions holding the most whose oldest unacknowledged message is
older than ``slow_consumer_timeout`` are closed with 4004, like any slow
consumer, and shed in turn. A client that acknowledges in time is never
closed for the budget (a wide publish counts once per subscriber: it may
pass the limit for a moment while every subscriber keeps up).

Summing every log costs one pass over the sessions, so the budget is
checked every ``max_retained_bytes / 16`` appended bytes (the overshoot
between two checks) and on every housekeeping sweep, not on every append.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from .._core.errors import CloseCode
from .sessions import HubSession, SessionTable
from .stats import HubCounters

CHECKS_PER_BUDGET: Final = 16
"""Appending this fraction of the budget triggers a check."""


class RetentionBudget:
    """Keeps all sessions' retained bytes under a limit (see the module docstring)."""

    __slots__ = ("_since", "_step", "counters", "limit", "on_shed", "retained", "stall", "table")

    def __init__(
        self,
        table: SessionTable,
        limit: int,
        on_shed: Callable[[HubSession], None],
        counters: HubCounters,
        stall: float,
    ) -> None:
        self.table = table
        self.limit = limit
        self.counters = counters
        self.stall = stall
        """A connected session is closed only once its oldest message waited this long."""
        self.on_shed = on_shed
        """Told of each session that lost messages (the journal records the trim)."""
        self.retained = 0
        """All sessions' retained bytes at the last check."""
        self._step = max(1, limit // CHECKS_PER_BUDGET)
        self._since = 0

    def appended(self, nbytes: int) -> int:
        """``nbytes`` were retained (per target); check now and then; return messages shed."""
        self._since += nbytes
        if self._since < self._step:
            return 0
        return self.check()

    def check(self) -> int:
        """Sum what every session retains; shed past the limit; return messages shed."""
        self._since = 0
        table = self.table
        total = sum(session.outbound.size for session in table.by_id.values())
        dropped = 0
        if total > self.limit:
            for away in (table.away_anonymous, table.away):  # longest disconnected first
                for session in list(away.values()):
                    total, dropped = self._shed(session, total, dropped)
                    if total <= self.limit:
                        break
                if total <= self.limit:
                    break
        if total > self.limit:  # connected clients that do not acknowledge: the largest go
            stale = trio.current_time() - self.stall
            holders = sorted(
                (
                    s
                    for s in table.by_id.values()
                    if s.connection is not None
                    and s.outbound.entries
                    and s.outbound.entries[0].stamp <= stale
                ),
                key=lambda s: s.outbound.size,
                reverse=True,
            )
            for session in holders:
                link = session.connection
                assert link is not None
                self.counters.slow_consumers_closed += 1
                link.close_soon(CloseCode.SLOW_CONSUMER, "the hub's retention budget is spent")
                total, dropped = self._shed(session, total, dropped)
                if total <= self.limit:
                    break
        self.retained = total
        return dropped

    def _shed(self, session: HubSession, total: int, dropped: int) -> tuple[int, int]:
        n, freed = session.outbound.shed(total - self.limit)
        if n:
            self.on_shed(session)
        return total - freed, dropped + n
