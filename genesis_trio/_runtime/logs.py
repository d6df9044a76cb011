"""Budgets for logs: nobody must be able to flood them.

:class:`LogBudget` lets ``burst`` records through per ``window`` seconds from
one call site and counts the rest. Some failures a client can provoke at will
are logged with a traceback by the serving stack (Hypercorn's "Error in ASGI
Framework", our containment warnings): :class:`TracebackBudget` applies a
budget to a logger's records with tracebacks, saying how many it dropped on
the next record it lets through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


class LogBudget:
    """At most ``burst`` log records per ``window`` seconds from one call site.

    ``take(now)`` says whether to log now: None when over the budget (the
    record is counted as dropped), else how many were dropped since the last
    one logged (say so in the record).
    """

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self._started = -math.inf
        self._passed = 0
        self.dropped = 0

    def take(self, now: float) -> int | None:
        """None: drop this record; else log it, saying how many were dropped before."""
        if now - self._started >= self.window:
            self._started, self._passed = now, 0
        if self._passed >= self.burst:
            self.dropped += 1
            return None
        self._passed += 1
        dropped, self.dropped = self.dropped, 0
        return dropped


class TracebackBudget(logging.Filter):
    """Drops records with a traceback beyond ``burst`` per ``window`` seconds."""

    def __init__(
        self, burst: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.budget = LogBudget(burst, window)
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record with a traceback over the budget."""
        if not record.exc_info:
            return True
        dropped = self.budget.take(self.clock())
        if dropped is None:
            return False
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar records with tracebacks dropped]"
        return True


def budget_tracebacks(*names: str, burst: int = 10, window: float = 60.0) -> None:
    """Install a :class:`TracebackBudget` on each named logger (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TracebackBudget) for f in logger.filters):
            logger.addFilter(TracebackBudget(burst, window))
