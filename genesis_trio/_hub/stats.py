"""Statistics snapshots (frozen) and the mutable counters behind them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .._core.heartbeat import RttEstimator
from .._core.histogram import LATENCY_BUCKETS, SIZE_BUCKETS, Histogram
from .sessions import HubSession


@attrs.frozen
class ComponentInfo:
    """One session on the hub, as :meth:`TranscendentalExternalWebSocket.components` lists it."""

    component_id: str
    """The component id."""
    connected: bool
    """True while a link (or a local component) is attached."""
    anonymous: bool
    """True when the hub assigned the id (the client sent none)."""
    topics: tuple[str, ...]
    """Subscriptions, sorted."""
    pending: int
    """Messages for it not yet acknowledged (``pending_out``)."""
    epoch: int
    """The session's epoch."""
    node: str = ""
    """The hub that holds the session."""
    local: bool = False
    """True for an in-process component (``hub.local``)."""
    owner: str | None = None
    """The identity that owns it (with authentication)."""
    connected_since: float | None = None
    """When the current link attached (Unix time), while connected."""
    disconnected_since: float | None = None
    """When the last link went (Unix time), while disconnected."""
    pending_in: int = 0
    """Messages it sent that wait for room at their targets (its link's backlog)."""
    rtt_ms: float | None = None
    """Its link's smoothed heartbeat round trip, in milliseconds."""

    @classmethod
    def of(
        cls, session: HubSession, node: str = "", now: float = 0.0, wall: float = 0.0
    ) -> ComponentInfo:
        """The row of ``session`` (``now``: the Trio clock, ``wall``: Unix time, at once)."""
        link = session.connection
        backlog = getattr(link, "backlog", None)
        heartbeat = getattr(link, "heartbeat", None)
        srtt = heartbeat.rtt.srtt if heartbeat is not None else None

        def unix(stamp: float | None) -> float | None:
            return None if stamp is None else round(wall - (now - stamp), 3)

        return cls(
            session.component_id,
            session.connected,
            session.anonymous,
            tuple(sorted(session.topics)),
            len(session.outbound),
            session.epoch,
            node=node,
            local=link is not None and backlog is None,
            owner=session.owner,
            connected_since=unix(session.connected_at) if link is not None else None,
            disconnected_since=unix(session.disconnected_at) if link is None else None,
            pending_in=sum(
                len(item.frame.bodies) - item.next for item in backlog if item.frame is not None
            )
            if backlog
            else 0,
            rtt_ms=None if srtt is None else round(srtt * 1000, 3),
        )


@attrs.define(eq=False)
class LocalCounters:
    """Mutable counters of one local component."""

    messages_sent: int = 0
    messages_received: int = 0
    requests_sent: int = 0
    errors_contained: int = 0


@attrs.frozen
class LocalStatistics:
    """A snapshot of a local component's metrics."""

    component_id: str
    """Its component id."""
    attached: bool
    """True while it holds its session (between start and close)."""
    messages_sent: int
    """Messages it sent (requests and replies included)."""
    messages_received: int
    """Messages handed to handlers or ``receive()``, replies included."""
    requests_sent: int
    """Requests it sent."""
    errors_contained: int
    """Handler exceptions caught (answered as errors to requests)."""
    pending: int
    """Messages for it in its session not yet handled."""


@attrs.frozen
class StoreStatus:
    """The session store as the statistics see it."""

    name: str
    """``none``, ``memory``, ``sqlite:PATH``..."""
    healthy: bool
    commits: int
    rows_written: int
    failures: int


@attrs.define(eq=False)
class HubCounters:
    """Mutable counters updated on the hub's hot path."""

    connections_total: int = 0
    active_connections: int = 0
    messages_in: int = 0
    messages_out: int = 0
    delivery_frames: int = 0
    errors_contained: int = 0
    resumes_recovered: int = 0
    resumes_failed: int = 0
    messages_replayed: int = 0
    duplicates_dropped: int = 0
    messages_evicted: int = 0
    slow_consumers_closed: int = 0
    heartbeat_timeouts: int = 0
    messages_too_large: int = 0
    messages_not_representable: int = 0
    handshake_failures: int = 0
    replaced_connections: int = 0
    sessions_expired: int = 0
    serving_failures: int = 0
    auth_failures: int = 0
    forbidden: int = 0
    rate_limited: int = 0
    floods_closed: int = 0
    messages_carried_over: int = 0
    connections_refused: int = 0
    sessions_refused: int = 0
    sessions_evicted: int = 0
    close_codes: dict[int, int] = attrs.field(factory=dict)
    rtt: RttEstimator = attrs.field(factory=lambda: RttEstimator(window=1024))
    delivery_seconds: Histogram = attrs.field(factory=lambda: Histogram(LATENCY_BUCKETS))
    """Hub receive (append to a session's log) to frame written, per message."""
    frame_messages: Histogram = attrs.field(factory=lambda: Histogram(SIZE_BUCKETS))
    """Messages per delivery frame written."""
    rtt_seconds: Histogram = attrs.field(factory=lambda: Histogram(LATENCY_BUCKETS))
    """Heartbeat round trips."""

    def message_too_large(self) -> None:
        """Hypercorn closed a link with 1009 (message too big, maybe after inflation)."""
        self.errors_contained += 1
        self.messages_too_large += 1

    def closed(self, code: int) -> None:
        """A link ended with ``code``, before its welcome or after (1006: the peer left).

        A client's own close frame counts as 1006 too: Hypercorn reports it to
        the app as 1006, without the client's code.
        """
        key = int(code)
        self.close_codes[key] = self.close_codes.get(key, 0) + 1

    def connection_failed(self, exc: BaseException) -> None:
        """The serving stack contained an exception of one connection."""
        self.errors_contained += 1
        self.serving_failures += 1


@attrs.frozen
class HubStatistics:
    """A snapshot of the hub's metrics (names are part of the public API)."""

    node_id: str
    """This hub's name."""
    active_connections: int
    """Connections attached right now."""
    connections_total: int
    """Connections accepted since start (handshake completed)."""
    sessions: int
    """Sessions held (connected or waiting for resume)."""
    messages_processed: int
    """Messages in plus messages out (the seed's "mensajes procesados")."""
    messages_in: int
    """Application messages received from clients (duplicates excluded)."""
    messages_out: int
    """Application messages written to clients (replays included)."""
    errors_contained: int
    """Malformed frames, failing handlers and internal errors caught at a connection's boundary."""
    recovery_events: int
    """Resume attempts: ``resumes_recovered + resumes_failed``."""
    resumes_recovered: int
    """Resumes that continued the session exactly."""
    resumes_failed: int
    """Resumes that could not continue (a new epoch was started)."""
    messages_replayed: int
    """Messages sent again after a resume."""
    messages_carried_over: int
    """Unacknowledged messages moved into a new session that replaced its component's old one."""
    duplicates_dropped: int
    """Client messages received again and ignored (already processed)."""
    messages_evicted: int
    """Unacknowledged messages dropped by retention (count, age or the hub-wide
    ``max_retained_bytes``)."""
    slow_consumers_closed: int
    """Connections closed with 4004 because their buffer stayed full."""
    heartbeat_timeouts: int
    """Connections closed with 4003 because the client fell silent."""
    messages_too_large: int
    """Connections closed with 1009: a message over ``max_message_size`` (after inflation)."""
    messages_not_representable: int
    """Messages replaced by a ``not_representable`` notice: their data has no form in the
    receiver's codec (bytes for a JSON client)."""
    handshake_failures: int
    """Connections refused or dropped before a completed hello/welcome."""
    connections_refused: int
    """Upgrades refused at a connection limit (HTTP 503 in all, 429 per address)."""
    sessions_refused: int
    """Hellos refused with 1013 at the session limit (every session connected)."""
    sessions_evicted: int
    """Disconnected sessions forgotten early to make room under ``max_sessions``."""
    serving_failures: int
    """Exceptions of one connection contained by the serving stack (a bug to report)."""
    auth_failures: int
    """Handshakes refused with 1008: a credential refused, or a component id it may not use."""
    forbidden: int
    """Sends, publishes and subscriptions refused by the authorizer (``forbidden``)."""
    rate_limited: int
    """Times a link was slowed down by a rate limit."""
    floods_closed: int
    """Links closed with 1008 for staying over their rate limit past ``flood_timeout``."""
    replaced_connections: int
    """Connections closed with 4001 because a newer one took their place."""
    sessions_expired: int
    """Disconnected sessions forgotten after ``session_expiry``."""
    delivery_frames: int
    """``msg``/``batch`` frames written to clients."""
    collapse_factor: float
    """Messages per delivery frame (``messages_out / delivery_frames``; 1.0 when idle)."""
    rtt_ewma_ms: float | None
    """Smoothed heartbeat round-trip time over all links, in milliseconds."""
    rtt_p99_ms: float | None
    """99th percentile of recent heartbeat round-trip times, in milliseconds."""
    store: str
    """The session store (``none``: sessions live in this process only)."""
    store_healthy: bool
    """False while the session store is failing (links are refused with 4006)."""
    store_commits: int
    """Batches written to the session store."""
    store_rows_written: int
    """Records those batches carried: one per stored message, plus session states,
    trims and deletes (records/commit = group-commit efficiency; SQLite packs a
    session's records into one table row, so these are not SQL rows)."""
    store_failures: int
    """Failed store writes (each retried; nothing unstored is acknowledged)."""
    close_codes: dict[int, int]
    """Links ended (refused before the welcome too), by close code; 1006: the peer left
    (its own close frame included: Hypercorn does not pass the client's code)."""
    presence_events: int = 0
    """Presence messages routed to ``$presence`` (each to every subscriber)."""
    presence_dropped: int = 0
    """Presence changes dropped: its queue was full (subscribers far too slow)."""
    late_replies: int = 0
    """Replies to the hub's own requests that came after the request gave up."""
    retained_bytes: int = 0
    """Bytes all sessions retained at the last check of ``max_retained_bytes``."""


def hub_snapshot(
    node_id: str, c: HubCounters, sessions: int, store: StoreStatus, **extra: int
) -> HubStatistics:
    """Freeze the counters into a :class:`HubStatistics`."""
    p99 = c.rtt.percentile(0.99)
    return HubStatistics(
        node_id=node_id,
        active_connections=c.active_connections,
        connections_total=c.connections_total,
        sessions=sessions,
        messages_processed=c.messages_in + c.messages_out,
        messages_in=c.messages_in,
        messages_out=c.messages_out,
        errors_contained=c.errors_contained,
        recovery_events=c.resumes_recovered + c.resumes_failed,
        resumes_recovered=c.resumes_recovered,
        resumes_failed=c.resumes_failed,
        messages_replayed=c.messages_replayed,
        messages_carried_over=c.messages_carried_over,
        duplicates_dropped=c.duplicates_dropped,
        messages_evicted=c.messages_evicted,
        slow_consumers_closed=c.slow_consumers_closed,
        heartbeat_timeouts=c.heartbeat_timeouts,
        messages_too_large=c.messages_too_large,
        messages_not_representable=c.messages_not_representable,
        handshake_failures=c.handshake_failures,
        connections_refused=c.connections_refused,
        sessions_refused=c.sessions_refused,
        sessions_evicted=c.sessions_evicted,
        serving_failures=c.serving_failures,
        auth_failures=c.auth_failures,
        forbidden=c.forbidden,
        rate_limited=c.rate_limited,
        floods_closed=c.floods_closed,
        replaced_connections=c.replaced_connections,
        sessions_expired=c.sessions_expired,
        delivery_frames=c.delivery_frames,
        collapse_factor=(c.messages_out / c.delivery_frames) if c.delivery_frames else 1.0,
        rtt_ewma_ms=None if c.rtt.srtt is None else c.rtt.srtt * 1000,
        rtt_p99_ms=None if p99 is None else p99 * 1000,
        store=store.name,
        store_healthy=store.healthy,
        store_commits=store.commits,
        store_rows_written=store.rows_written,
        store_failures=store.failures,
        close_codes=dict(c.close_codes),
        **extra,
    )


def totals(snapshots: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The sum of every numeric statistic over several nodes' ``get_stats()``."""
    summed: dict[str, float] = {}
    for stats in snapshots:
        for name, value in stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                summed[name] = summed.get(name, 0) + value
    return summed
