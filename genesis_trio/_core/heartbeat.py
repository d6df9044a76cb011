"""Heartbeat decisions: when to ping, RTT estimation, dead-peer timeout (sans-IO).

Any frame from the peer proves it alive. The hub pings every ``interval``
(``when_silent=False``); a client pings only when it has heard nothing for
``interval`` (``when_silent=True``), so an idle link carries one ping and one
pong per interval, not two of each. The peer is declared dead when nothing
has arrived for ``interval + grace``, where ``grace`` follows the measured
round-trip time (4 x the 99th percentile of recent samples, or SRTT + 4
RTTVAR while samples are few; one interval before any), clamped between
``floor`` and ``ceiling``.
"""

from __future__ import annotations

from collections import deque

import attrs

from .frames import Ping


@attrs.define(eq=False)
class RttEstimator:
    """Smoothed RTT (EWMA, RFC 6298 gains) and percentiles over recent samples."""

    window: int = 64
    srtt: float | None = None
    rttvar: float = 0.0
    samples: deque[float] | None = None
    """Recent samples (made on the first one: idle links carry no buffer)."""
    count: int = 0

    def add(self, rtt: float) -> None:
        """Record one round-trip time in seconds."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        samples = self.samples
        if samples is None:
            samples = self.samples = deque(maxlen=self.window)
        samples.append(rtt)
        self.count += 1

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of recent samples, or None without samples."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@attrs.define(eq=False)
class Heartbeat:
    """When to ping and when the peer counts as dead; fed with ``now``."""

    interval: float
    floor: float
    ceiling: float
    now: float = attrs.field(alias="now")
    rtt: RttEstimator = attrs.field(factory=RttEstimator)
    when_silent: bool = False
    """Ping only after ``interval`` without hearing from the peer."""
    last_received: float = attrs.field(init=False)
    next_ping: float = attrs.field(init=False)
    _next_id: int = 0
    _outstanding: dict[int, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.last_received = self.now
        self.next_ping = self.now + self.interval

    def received(self, now: float) -> None:
        """Something arrived from the peer."""
        self.last_received = now
        if self.when_silent and now + self.interval > self.next_ping:
            self.next_ping = now + self.interval

    def grace(self) -> float:
        """Extra silence tolerated beyond one interval, derived from RTT."""
        if self.rtt.count >= 8:
            p99 = self.rtt.percentile(0.99) or 0.0
            estimate = 4 * p99
        elif self.rtt.srtt is not None:
            estimate = self.rtt.srtt + 4 * self.rtt.rttvar
        else:
            estimate = self.interval
        return min(self.ceiling, max(self.floor, estimate))

    def timeout(self) -> float:
        """Silence after which the peer is dead."""
        return self.interval + self.grace()

    def deadline(self) -> float:
        """The instant at which the peer counts as dead unless something arrives."""
        return self.last_received + self.timeout()

    def dead(self, now: float) -> bool:
        """True when the peer has been silent past its deadline."""
        return now >= self.deadline()

    def ping_due(self, now: float) -> Ping | None:
        """Return a ping to send if one is due (and schedule the next)."""
        if now < self.next_ping:
            return None
        self.next_ping = now + self.interval
        self._next_id += 1
        self._outstanding[self._next_id] = now
        if len(self._outstanding) > 8:  # bounded: forget the oldest unanswered
            del self._outstanding[next(iter(self._outstanding))]
        return Ping(self._next_id)

    def pong(self, ping_id: int, now: float) -> float | None:
        """Match a pong to our ping; return the RTT sample (None if unknown)."""
        sent = self._outstanding.pop(ping_id, None)
        if sent is None:
            return None
        sample = now - sent
        self.rtt.add(sample)
        return sample

    def next_wakeup(self) -> float:
        """The earliest instant at which something must be checked."""
        return min(self.next_ping, self.deadline())
