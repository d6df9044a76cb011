"""Reconnect schedules and the circuit breaker (sans-IO).

The schedule is a plain iterator of delays with full jitter (AWS
architecture blog, "Exponential Backoff and Jitter"), injectable in tests; the
breaker is a small state machine that takes ``now`` as an argument.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterator

import attrs


def backoff(
    initial: float = 0.1,
    factor: float = 2.0,
    cap: float = 10.0,
    *,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield delays with full jitter: uniform in ``[0, min(cap, initial * factor**n)]``.

    The sequence never ends; the caller decides when to give up.
    """
    if not (initial > 0 and factor >= 1 and cap >= initial):  # also rejects NaN
        raise ValueError("need initial > 0, factor >= 1 and cap >= initial")
    return _schedule(initial, factor, cap, (rng or random.Random()).uniform)


def _schedule(
    initial: float, factor: float, cap: float, draw: Callable[[float, float], float]
) -> Iterator[float]:
    ceiling = initial
    while True:
        yield draw(0.0, ceiling)
        ceiling = min(cap, ceiling * factor)


class BreakerState(enum.Enum):
    """States of :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.define(eq=False)
class CircuitBreaker:
    """Stop hammering a peer that keeps refusing the handshake.

    After ``threshold`` consecutive failures the breaker opens for
    ``reset_timeout`` seconds; then it half-opens and lets one attempt
    through: success closes it, failure opens it again.
    """

    threshold: int = 5
    reset_timeout: float = 30.0
    failures: int = 0
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    times_opened: int = 0

    def allow(self, now: float) -> bool:
        """May an attempt start at ``now``? (Moves OPEN to HALF_OPEN when due.)"""
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.reset_timeout:
                return False
            self.state = BreakerState.HALF_OPEN
        return True

    def retry_at(self) -> float:
        """When an open breaker will let the next attempt through."""
        return self.opened_at + self.reset_timeout

    def success(self) -> None:
        """An attempt succeeded: close."""
        self.failures = 0
        self.state = BreakerState.CLOSED

    def failure(self, now: float) -> None:
        """An attempt failed: count it, open when the threshold is reached."""
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            if self.state is not BreakerState.OPEN:
                self.times_opened += 1
            self.state = BreakerState.OPEN
            self.opened_at = now
