"""The hub-wide bound on retained messages (``max_retained_bytes``).

Each session's log is bounded (``retention_messages``, ``retention_bytes``),
but nothing else bounded their sum: one client could create many sessions,
leave them, and fill each one with messages of its own until the hub ran
out of memory. :class:`RetentionBudget` keeps the sum of every session's
retained bytes (counted as ``retention_bytes`` counts them) under
``max_retained_bytes``: past it, the sessions disconnected longest
(anonymous ones first, as ``max_sessions`` forgets them) lose their oldest
messages, exactly as retention drops them (the next resume says
``recovered: false``). Connected sessions are never shed here: their logs
are bounded by flow control, and a reader too slow for it is closed (4004)
and becomes sheddable.

Summing every log costs one pass over the sessions, so the budget is
checked every ``max_retained_bytes / 16`` appended bytes (the overshoot
between two checks) and on every housekeeping sweep, not on every append.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .sessions import HubSession, SessionTable

CHECKS_PER_BUDGET: Final = 16
"""Appending this fraction of the budget triggers a check."""


class RetentionBudget:
    """Keeps all sessions' retained bytes under a limit (see the module docstring)."""

    __slots__ = ("_since", "_step", "limit", "on_shed", "retained", "table")

    def __init__(
        self, table: SessionTable, limit: int, on_shed: Callable[[HubSession], None]
    ) -> None:
        self.table = table
        self.limit = limit
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
                    n, freed = session.outbound.shed(total - self.limit)
                    if n:
                        dropped += n
                        total -= freed
                        self.on_shed(session)
                    if total <= self.limit:
                        break
                if total <= self.limit:
                    break
        self.retained = total
        return dropped
