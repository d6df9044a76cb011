"""Configuration of the hub and of the client (immutable, validated)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
from attrs import validators as v

if TYPE_CHECKING:
    import ssl  # only a type here: the core does no I/O

_pos_f = v.gt(0.0)
_pos_i = v.gt(0)
_nonneg = v.ge(0.0)
_opt_pos_f = v.optional(v.gt(0.0))


def _lower_set(origins: object) -> frozenset[str]:
    if isinstance(origins, str):
        raise TypeError("allowed_origins is a collection of origins, not one string")
    return frozenset(str(origin).lower().rstrip("/") for origin in origins)  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class HubConfig:
    """Tunables of :class:`TranscendentalExternalWebSocket`; defaults suit most uses."""

    node_id: str = attrs.field(factory=lambda: "hub-" + secrets.token_hex(4))
    """This hub's name in welcomes and metrics."""
    handshake_timeout: float = attrs.field(default=5.0, validator=_pos_f)
    """Seconds a new connection has to send its ``hello``."""
    heartbeat_interval: float = attrs.field(default=5.0, validator=_pos_f)
    """Seconds between pings sent by the hub."""
    heartbeat_floor: float = attrs.field(default=2.0, validator=_pos_f)
    """Least silence tolerated beyond one interval before a peer is dead."""
    heartbeat_ceiling: float = attrs.field(default=30.0, validator=_pos_f)
    """Most silence tolerated beyond one interval before a peer is dead."""
    compression: str = attrs.field(default="deflate", validator=v.in_(("deflate", "off")))
    """``"deflate"``: accept permessage-deflate when a client offers it (browsers always
    do); ``"off"``: never. Deflate costs ~100 KiB of zlib state per link and about
    40 % of the messages per second (docs/performance.md)."""
    max_message_size: int = attrs.field(default=1 << 20, validator=_pos_i)
    """Largest WebSocket message accepted, after decompression (bytes)."""
    window: int = attrs.field(default=1000, validator=_pos_i)
    """Most unacknowledged messages in flight per direction per link."""
    max_batch: int = attrs.field(default=512, validator=_pos_i)
    """Most messages the hub packs into one ``batch`` frame."""
    coalesce_max_delay: float = attrs.field(default=0.001, validator=_nonneg)
    """Longest a link's writer waits for a batch to form under high rates (0: never)."""
    retention_messages: int = attrs.field(default=10_000, validator=_pos_i)
    """Most unacknowledged messages kept per session for resume."""
    retention_bytes: int = attrs.field(default=16 << 20, validator=_pos_i)
    """Most bytes of unacknowledged messages kept per session (like ``retention_messages``)."""
    retention_seconds: float = attrs.field(default=300.0, validator=_pos_f)
    """Oldest unacknowledged message kept for a disconnected session."""
    max_retained_bytes: int = attrs.field(default=1 << 30, validator=_pos_i)
    """Most bytes all sessions retain together, counted as ``retention_bytes`` counts them
    (a publish once per subscriber); past it the longest-disconnected sessions lose their
    oldest messages, as retention would (:mod:`genesis_trio._hub.budget`)."""
    session_expiry: float = attrs.field(default=3600.0, validator=_pos_f)
    """A session disconnected this long is forgotten."""
    slow_consumer_timeout: float = attrs.field(default=5.0, validator=_pos_f)
    """How long a sender waits for room before the full consumer is closed."""
    ack_delay: float = attrs.field(default=0.02, validator=_nonneg)
    """Longest an acknowledgement waits for a frame to ride on."""
    max_bad_frames: int = attrs.field(default=10, validator=_pos_i)
    """Malformed frames tolerated per ``bad_frame_window`` before closing."""
    bad_frame_window: float = attrs.field(default=10.0, validator=_pos_f)
    """The window, in seconds, over which malformed frames are counted."""
    allowed_origins: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_lower_set)
    )
    """Origins accepted from browsers (None: the hub's own origin only; ``{"*"}``: any).

    Clients that send no ``Origin`` (not browsers) are not affected.
    """
    close_timeout: float = attrs.field(default=2.0, validator=_pos_f)
    """Bound on closing one link: past it the socket is dropped, whatever the peer does."""
    max_connections: int = attrs.field(default=10_000, validator=_pos_i)
    """WebSocket links held at once (handshakes included); more are refused with HTTP 503."""
    max_connections_per_address: int = attrs.field(default=1_000, validator=_pos_i)
    """Links held at once from one client address; more are refused with HTTP 429."""
    max_sessions: int = attrs.field(default=100_000, validator=_pos_i)
    """Sessions held; at the limit the longest-disconnected one is forgotten, or 1013."""
    anonymous_session_expiry: float = attrs.field(default=60.0, validator=_pos_f)
    """A disconnected session of a client that sent no id is forgotten after this."""
    max_topics_per_session: int = attrs.field(default=1024, validator=_pos_i)
    """Subscriptions one session may hold; more are refused with an error frame ``limit``."""
    max_subscriptions: int = attrs.field(default=1_000_000, validator=_pos_i)
    """Subscriptions all sessions hold together (about 200 bytes each); more are refused."""
    max_backlog_bytes: int = attrs.field(default=4 << 20, validator=_pos_i)
    """Bytes of a link's messages held while they wait for room; past it the link is not read."""
    store_outage_timeout: float = attrs.field(default=10.0, validator=_pos_f)
    """A session store failing this long closes every link with 4006 until it recovers."""
    token_grace: float = attrs.field(default=30.0, validator=_nonneg)
    """How long a link may outlive its credential's expiry before it is closed with 4009."""
    rate_messages: float | None = attrs.field(default=None, validator=_opt_pos_f)
    """Messages per second one link may send (None: no limit); beyond the burst it is slowed."""
    rate_bytes: float | None = attrs.field(default=None, validator=_opt_pos_f)
    """Bytes per second one link may send (None: no limit)."""
    identity_rate_messages: float | None = attrs.field(default=None, validator=_opt_pos_f)
    """Messages per second all links of one identity may send together (None: no limit)."""
    identity_rate_bytes: float | None = attrs.field(default=None, validator=_opt_pos_f)
    """Bytes per second all links of one identity may send together (None: no limit)."""
    rate_burst: float = attrs.field(default=2.0, validator=_pos_f)
    """A rate limit's burst, in seconds of its rate."""
    flood_timeout: float = attrs.field(default=10.0, validator=_pos_f)
    """A link slowed by its rate limit this long without pause is closed with 1008."""


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Tunables of :class:`TranscendentalWebSocket`."""

    codec: str = attrs.field(default="json", validator=v.in_(("json", "msgpack")))
    """Wire encoding: ``"json"`` or ``"msgpack"``."""
    token: str | Callable[[], str | Awaitable[str]] | None = None
    """Credential sent in ``hello``, or a (sync or async) function returning a fresh one,
    called on every (re)connect."""
    ssl_context: ssl.SSLContext | None = None
    """TLS settings for ``wss://`` (None: the system's default, verifying the hostname)."""
    compress: bool = False
    """Offer permessage-deflate (costs ~300 KiB of zlib state per link)."""
    max_message_size: int = attrs.field(default=1 << 20, validator=_pos_i)
    """Largest message accepted from the hub, after decompression."""
    max_pending: int = attrs.field(default=1000, validator=_pos_i)
    """Outbound messages kept until acknowledged; ``send()`` waits when full."""
    send_timeout: float = attrs.field(default=30.0, validator=_pos_f)
    """Longest ``send()`` waits for room before raising ``SendTimeout``."""
    request_timeout: float = attrs.field(default=30.0, validator=_pos_f)
    """Default deadline of ``request()``."""
    max_batch: int = attrs.field(default=512, validator=_pos_i)
    """Most messages packed into one ``batch`` frame."""
    coalesce_max_delay: float = attrs.field(default=0.001, validator=_nonneg)
    """Longest the writer waits for a batch to form under high rates (0: never)."""
    connect_timeout: float = attrs.field(default=10.0, validator=_pos_f)
    """Bound on TCP connect + WebSocket upgrade + hello/welcome."""
    heartbeat_interval: float = attrs.field(default=5.0, validator=_pos_f)
    """Seconds between pings sent by the client."""
    heartbeat_floor: float = attrs.field(default=2.0, validator=_pos_f)
    """Least silence tolerated beyond one interval before the hub is dead."""
    heartbeat_ceiling: float = attrs.field(default=30.0, validator=_pos_f)
    """Most silence tolerated beyond one interval before the hub is dead."""
    ack_delay: float = attrs.field(default=0.02, validator=_nonneg)
    """Longest an acknowledgement waits for a frame to ride on."""
    reconnect: bool = True
    """Reconnect and resume after a lost link."""
    backoff_initial: float = attrs.field(default=0.1, validator=_pos_f)
    """First reconnect delay ceiling (full jitter below it)."""
    backoff_cap: float = attrs.field(default=10.0, validator=_pos_f)
    """Largest reconnect delay."""
    breaker_threshold: int = attrs.field(default=10, validator=_pos_i)
    """Consecutive failed handshakes that open the circuit breaker."""
    breaker_reset: float = attrs.field(default=30.0, validator=_pos_f)
    """Seconds the breaker stays open before one trial attempt."""
    max_reconnect_attempts: int | None = None
    """Give up after this many reconnects within ``reconnect_window`` (None: never)."""
    reconnect_window: float = attrs.field(default=60.0, validator=_pos_f)
    """The sliding window, in seconds, for ``max_reconnect_attempts``."""
    close_timeout: float = attrs.field(default=2.0, validator=_pos_f)
    """Bound on flushing and closing in ``aclose()``."""
    inbox_size: int = attrs.field(default=1000, validator=_pos_i)
    """Messages without a handler waiting for ``receive()``."""
