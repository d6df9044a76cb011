"""A budget for tracebacks in logs: a client must not be able to flood them.

Some failures a client can provoke at will are logged with a traceback by
the serving stack (Hypercorn's "Error in ASGI Framework", our containment
warnings). :class:`TracebackBudget` lets ``burst`` such records through per
``window`` seconds per logger and drops the rest, saying how many it dropped
on the next record it lets through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


class TracebackBudget(logging.Filter):
    """Drops records with a traceback beyond ``burst`` per ``window`` seconds."""

    def __init__(
        self, burst: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._started = -window
        self._passed = 0
        self.dropped = 0
        """Records dropped since the last one let through."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record with a traceback over the budget."""
        if not record.exc_info:
            return True
        now = self.clock()
        if now - self._started >= self.window:
            self._started, self._passed = now, 0
        if self._passed >= self.burst:
            self.dropped += 1
            return False
        self._passed += 1
        if self.dropped:
            record.msg = f"{record.msg} [{self.dropped} similar records with tracebacks dropped]"
            self.dropped = 0
        return True


def budget_tracebacks(*names: str, burst: int = 10, window: float = 60.0) -> None:
    """Install a :class:`TracebackBudget` on each named logger (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TracebackBudget) for f in logger.filters):
            logger.addFilter(TracebackBudget(burst, window))


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
