"""The client's data types: link events, states, statistics and counters."""

from __future__ import annotations

import enum

import attrs

from .._core.backoff import CircuitBreaker
from .._core.errors import CloseCode, ConnectionClosed
from .._core.heartbeat import RttEstimator

FATAL_CLOSE_CODES = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.POLICY_VIOLATION,
        CloseCode.BAD_HANDSHAKE,
        CloseCode.REPLACED,
        CloseCode.UNSUPPORTED_VERSION,
    }
)
"""Close codes after which reconnecting cannot help: ``run()`` raises instead."""

SUB_PING_BASE = 1 << 40
"""Ping ids from here up confirm subscriptions, below they are heartbeats."""


@attrs.frozen
class Connected:
    """A link came up. ``first`` for the session's first; ``recovered`` for exact resumes."""

    sid: str
    epoch: int
    first: bool
    recovered: bool
    replayed: int
    """Our unacknowledged messages sent again on this link."""


@attrs.frozen
class Disconnected:
    """A link went down with a WebSocket close code and reason."""

    code: int
    reason: str
    will_retry: bool


LinkEvent = Connected | Disconnected


class LinkLost(ConnectionClosed):
    """A link ended; ``fatal`` when its close code forbids reconnecting."""

    def __init__(self, code: int, reason: str, fatal: bool) -> None:
        super().__init__(code, reason)
        self.fatal = fatal


class ConnectionState(enum.StrEnum):
    """Values of :attr:`TranscendentalWebSocket.state`."""

    IDLE = "idle"
    """Not started."""
    CONNECTING = "connecting"
    """Opening a link (first connect or reconnect)."""
    CONNECTED = "connected"
    """A link is up."""
    DISCONNECTED = "disconnected"
    """Between links (waiting to reconnect)."""
    CLOSED = "closed"
    """Closed for good."""


@attrs.frozen
class ClientStatistics:
    """A snapshot of one client's metrics."""

    component_id: str | None
    """Our component id."""
    state: ConnectionState
    """idle, connecting, connected, disconnected or closed."""
    connects: int
    """Successful handshakes (the first one included)."""
    reconnects: int
    """Successful handshakes after the first."""
    resumes_recovered: int
    """Reconnects that continued the session exactly."""
    resumes_failed: int
    """Reconnects that started a new epoch (a gap we were told about)."""
    connect_failures: int
    """Failed connection attempts."""
    messages_sent: int
    """Messages accepted by ``send``/``publish``/``request``/replies."""
    messages_received: int
    """Messages received from the hub (duplicates excluded)."""
    messages_replayed: int
    """Messages we sent again after a reconnect."""
    duplicates_dropped: int
    """Messages received twice and dropped."""
    errors_contained: int
    """Handler exceptions caught by the dispatcher."""
    error_frames: int
    """Error frames received from the hub."""
    pending: int
    """Outbound messages not yet acknowledged by the hub."""
    inbox: int
    """Received messages waiting for the dispatcher."""
    frames_sent: int
    """``msg``/``batch`` frames written."""
    collapse_factor: float
    """Messages per data frame written (1.0 when idle)."""
    rtt_ewma_ms: float | None
    """Smoothed heartbeat round-trip time, in milliseconds."""
    rtt_p99_ms: float | None
    """99th percentile of recent round-trip times, in milliseconds."""
    breaker: str
    """Circuit breaker state: closed, open or half_open."""
    breaker_opened: int
    """Times the circuit breaker opened (too many failed handshakes in a row)."""


@attrs.define(eq=False)
class ClientCounters:
    """Mutable counters behind :class:`ClientStatistics`."""

    connects: int = 0
    reconnects: int = 0
    resumes_recovered: int = 0
    resumes_failed: int = 0
    connect_failures: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    messages_replayed: int = 0
    duplicates_dropped: int = 0
    errors_contained: int = 0
    error_frames: int = 0
    frames_sent: int = 0
    messages_framed: int = 0

    def snapshot(
        self,
        *,
        component_id: str | None,
        state: ConnectionState,
        pending: int,
        inbox: int,
        rtt: RttEstimator,
        breaker: CircuitBreaker,
    ) -> ClientStatistics:
        """Freeze the counters, with the rest of the client's state, into statistics."""
        p99 = rtt.percentile(0.99)
        frames = self.frames_sent
        return ClientStatistics(
            component_id=component_id,
            state=state,
            connects=self.connects,
            reconnects=self.reconnects,
            resumes_recovered=self.resumes_recovered,
            resumes_failed=self.resumes_failed,
            connect_failures=self.connect_failures,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            messages_replayed=self.messages_replayed,
            duplicates_dropped=self.duplicates_dropped,
            errors_contained=self.errors_contained,
            error_frames=self.error_frames,
            pending=pending,
            inbox=inbox,
            frames_sent=frames,
            collapse_factor=(self.messages_framed / frames) if frames else 1.0,
            rtt_ewma_ms=None if rtt.srtt is None else rtt.srtt * 1000,
            rtt_p99_ms=None if p99 is None else p99 * 1000,
            breaker=breaker.state.value,
            breaker_opened=breaker.times_opened,
        )
