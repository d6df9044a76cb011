"""The exception tree, error codes and close codes (sans-IO: no Trio import).

Every error the library raises derives from :class:`GenesisError`. Protocol
errors follow wsproto/h11: :class:`LocalProtocolError` is *our* misuse (a bug
in the caller), :class:`RemoteProtocolError` is the *peer's* fault and carries
the answer to send back (an error frame code, and a close code when the
connection must end).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` field of an ``error`` frame (see docs/protocol.md)."""

    BAD_FRAME = "bad_frame"
    """The WebSocket message could not be decoded with the negotiated codec."""
    BAD_FIELD = "bad_field"
    """A required field is missing, or a field has the wrong type or value."""
    UNKNOWN_FRAME = "unknown_frame"
    """The frame type ``t`` is not one this protocol version defines."""
    UNKNOWN_TARGET = "unknown_target"
    """The message was addressed to a component with no session on the hub."""
    NO_TARGET = "no_target"
    """The message has neither ``to`` nor ``topic``."""
    TOO_LARGE = "too_large"
    """A message is larger than the receiving client accepts (it got this notice instead)."""
    SEQUENCE = "sequence"
    """A sequence number or acknowledgement is out of range (a gap)."""
    HANDLER_ERROR = "handler_error"
    """The handler that processed a request raised an exception."""
    NO_HANDLER = "no_handler"
    """Nothing on the receiving side handles requests of this type."""
    INTERNAL = "internal"
    """The hub failed while processing the frame; the error was contained."""
    FORBIDDEN = "forbidden"
    """The sender's identity may not send, publish or subscribe there (nothing was done)."""
    LIMIT = "limit"
    """A hub limit refused part of the request (subscriptions beyond the per-session or
    hub-wide limit); the rest was done."""
    NOT_REPRESENTABLE = "not_representable"
    """A message's data has no form in the receiving client's codec (bytes for JSON...)."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by genesis_trio (see docs/protocol.md)."""

    NORMAL = 1000
    """Orderly close, on request of either side."""
    GOING_AWAY = 1001
    """The hub is shutting down; reconnect (to another node) and resume."""
    PROTOCOL_ERROR = 1002
    """WebSocket-level protocol violation."""
    ABNORMAL_CLOSURE = 1006
    """No close frame: the connection was lost (never sent on the wire)."""
    POLICY_VIOLATION = 1008
    """Refused by policy (Origin, authentication)."""
    MESSAGE_TOO_BIG = 1009
    """A message (after decompression) exceeded the size limit."""
    INTERNAL_ERROR = 1011
    """Unexpected failure on the hub; the session is kept, resume."""
    TRY_AGAIN_LATER = 1013
    """The hub is at a limit (sessions); try again after a pause."""
    BAD_HANDSHAKE = 4000
    """The first frame was not a valid ``hello``."""
    REPLACED = 4001
    """A newer connection with the same component id took over."""
    HANDSHAKE_TIMEOUT = 4002
    """No ``hello`` arrived within the handshake timeout."""
    HEARTBEAT_TIMEOUT = 4003
    """Nothing was received from the peer within the dead-peer timeout."""
    SLOW_CONSUMER = 4004
    """The peer did not acknowledge messages in time; its buffer stayed full."""
    TOO_MANY_ERRORS = 4005
    """Too many malformed frames within the error window."""
    STORE_UNAVAILABLE = 4006
    """The session store failed; nothing unstored was acknowledged. Resume later."""
    SESSION_VIOLATION = 4007
    """A sequence number or acknowledgement broke the session rules."""
    UNSUPPORTED_VERSION = 4008
    """The ``hello`` asked for a protocol version the hub does not speak."""
    CREDENTIALS_EXPIRED = 4009
    """The link's credential expired: reconnect with a fresh one and resume."""


class GenesisError(Exception):
    """Base class of every exception raised by genesis_trio."""


class LocalProtocolError(GenesisError):
    """The local side (the caller of this library) broke a protocol rule."""


class RemoteProtocolError(GenesisError):
    """The peer broke a protocol rule.

    ``code`` is the error frame code to answer with; ``close_code`` is set
    when the connection cannot continue and must be closed with that code.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.BAD_FIELD,
        close_code: CloseCode | None = None,
        seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.seq = seq


class ConnectionClosed(GenesisError):
    """The link closed; ``code`` and ``reason`` are the WebSocket close details."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class HandshakeError(GenesisError):
    """The WebSocket upgrade or the hello/welcome exchange failed."""


class CircuitOpenError(GenesisError):
    """Too many consecutive handshake failures: the circuit breaker is open."""


class SendTimeout(GenesisError):
    """The outbound buffer stayed full for longer than the send timeout."""


class RequestTimeout(GenesisError):
    """No reply to a request arrived before its deadline."""


class RemoteError(GenesisError):
    """The peer (or the hub) answered a message with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UnknownComponent(GenesisError, LookupError):
    """The hub holds no session for that component id."""


class ClosedError(GenesisError):
    """The client or hub has been closed and cannot be used any more."""
