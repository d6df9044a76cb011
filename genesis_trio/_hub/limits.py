"""Limits: admission of links (in all and per address), and rate limits.

A link counts from its upgrade request (handshakes included) until its
connection ends. Past ``max_connections`` an upgrade is refused with HTTP
503, past ``max_connections_per_address`` with HTTP 429 (docs/protocol.md
§1). A :class:`TokenBucket` meters what a link (or an identity) sends.
Synchronous and O(1).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Refusal:
    """Why an upgrade is refused: the HTTP status and a one-line reason."""

    status: int
    reason: str


@attrs.define(eq=False)
class Admission:
    """Counts live links in all and per client address."""

    max_total: int
    max_per_address: int
    total: int = 0
    by_address: dict[str, int] = attrs.field(factory=dict)

    def admit(self, address: str | None) -> Refusal | None:
        """Count a new link from ``address``, or say why it is refused (then nothing is counted)."""
        if self.total >= self.max_total:
            return Refusal(503, f"the hub is at its connection limit ({self.max_total})")
        key = address or ""
        held = self.by_address.get(key, 0)
        if held >= self.max_per_address:
            return Refusal(
                429, f"too many connections from this address (limit {self.max_per_address})"
            )
        self.total += 1
        self.by_address[key] = held + 1
        return None

    def release(self, address: str | None) -> None:
        """A link admitted from ``address`` has ended."""
        key = address or ""
        self.total -= 1
        held = self.by_address[key] - 1
        if held:
            self.by_address[key] = held
        else:
            del self.by_address[key]


@attrs.define(eq=False)
class TokenBucket:
    """A token bucket: ``rate`` per second, holding at most ``burst`` seconds of it."""

    rate: float
    burst: float
    tokens: float = attrs.field(init=False)
    stamp: float = attrs.field(init=False, default=-1.0)

    def __attrs_post_init__(self) -> None:
        self.tokens = self.rate * self.burst

    def take(self, amount: float, now: float) -> float:
        """Spend ``amount`` now; return how long to wait until the bucket is out of debt."""
        if self.stamp >= 0.0:
            self.tokens = min(self.rate * self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate


@attrs.define(eq=False)
class RateLimits:
    """The buckets one link answers to: its own, and its identity's (shared by its links)."""

    buckets: list[tuple[TokenBucket, bool]] = attrs.field(factory=list)
    """(bucket, counts bytes): messages are counted otherwise."""
    flood_timeout: float = 10.0
    throttled_since: float | None = None
    """When the link began to be slowed down without a pause (None: it is not)."""

    def pause(self, messages: int, size: int, now: float) -> float | None:
        """Spend for one frame: how long the link must now pause; None for a flood to close.

        A flood: slowed down for ``flood_timeout`` without one frame that fit.
        """
        wait = 0.0
        for bucket, by_bytes in self.buckets:
            wait = max(wait, bucket.take(size if by_bytes else messages, now))
        if not wait:
            self.throttled_since = None
        elif self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since >= self.flood_timeout:
            return None
        return wait


class RateLimiter:
    """Makes each new link's :class:`RateLimits` from the configured rates.

    The buckets of an identity are shared by all its links and dropped with
    its last one, so they cost nothing for identities that are not connected.
    """

    def __init__(
        self,
        *,
        link_messages: float | None,
        link_bytes: float | None,
        identity_messages: float | None,
        identity_bytes: float | None,
        burst: float,
        flood_timeout: float,
    ) -> None:
        self.link_rates = (link_messages, link_bytes)
        self.identity_rates = (identity_messages, identity_bytes)
        self.burst = burst
        self.flood_timeout = flood_timeout
        self._shared: dict[str, tuple[int, list[tuple[TokenBucket, bool]]]] = {}

    def _buckets(self, rates: tuple[float | None, float | None]) -> list[tuple[TokenBucket, bool]]:
        messages, size = rates
        buckets = []
        if messages is not None:
            buckets.append((TokenBucket(messages, self.burst), False))
        if size is not None:
            buckets.append((TokenBucket(size, self.burst), True))
        return buckets

    def acquire(self, subject: str | None) -> RateLimits | None:
        """The limits of a new link (of identity ``subject``); None when nothing is limited."""
        buckets = self._buckets(self.link_rates)
        if subject is not None and any(r is not None for r in self.identity_rates):
            links, shared = self._shared.get(subject, (0, []))
            if not shared:
                shared = self._buckets(self.identity_rates)
            self._shared[subject] = (links + 1, shared)
            buckets += shared
        return RateLimits(buckets, self.flood_timeout) if buckets else None

    def release(self, subject: str | None) -> None:
        """A link of ``subject`` ended."""
        if subject is None or subject not in self._shared:
            return
        links, shared = self._shared[subject]
        if links <= 1:
            del self._shared[subject]
        else:
            self._shared[subject] = (links - 1, shared)


@attrs.define(eq=False)
class BadFrames:
    """Malformed frames a link sent within a sliding window (``max`` tolerated)."""

    max: int
    window: float
    times: list[float] = attrs.field(factory=list)

    def count(self, now: float) -> bool:
        """Record one at ``now``; True when more than ``max`` fall within the window."""
        times = self.times
        times.append(now)
        cutoff = now - self.window
        while times and times[0] <= cutoff:
            del times[0]
        return len(times) > self.max
