"""Opening one client link: TCP, the WebSocket upgrade, ``hello`` and ``welcome``.

:func:`open_link` connects (bounded by ``connect_timeout``), sends the
session's ``hello``, applies the hub's ``welcome`` to the session (exact
resume or a new epoch: :meth:`ClientSession.welcome`) and builds the link's
heartbeat and :class:`LinkProtocol` from what the welcome announced.
"""

from __future__ import annotations

import inspect

import trio

from .._core.coalesce import Coalescer
from .._core.codec import Codec
from .._core.config import ClientConfig
from .._core.errors import ConnectionClosed, HandshakeError, RemoteProtocolError
from .._core.frames import Error, Welcome, parse_frame
from .._core.heartbeat import Heartbeat, RttEstimator
from .._core.link import LinkProtocol
from .._core.session import ClientSession, ResumeResult
from .link import ClientLink
from .transport import ClientTransport, StreamFactory, connect_websocket


async def open_link(
    uri: str,
    config: ClientConfig,
    codec: Codec,
    session: ClientSession[bytes],
    rtt: RttEstimator,
    stream_factory: StreamFactory | None,
) -> tuple[ClientLink, Welcome, ResumeResult]:
    """One attempt: the link, the welcome, and what it meant for the session.

    Raises :class:`HandshakeError` (refused upgrade, bad welcome, timeout) or
    ``OSError`` (no TCP connection).
    """
    try:
        with trio.fail_after(config.connect_timeout):
            conn = await connect_websocket(
                uri,
                [codec.subprotocol],
                compress=config.compress,
                max_message_size=config.max_message_size,
                stream_factory=stream_factory,
                ssl_context=config.ssl_context,
            )
            try:
                welcome, rest, sample = await _handshake(conn, config, codec, session)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.abort()
                raise
    except trio.TooSlowError:
        raise HandshakeError(f"no welcome within {config.connect_timeout} s") from None
    except ConnectionClosed as exc:
        raise HandshakeError(f"hub closed the link during the handshake: {exc}") from None
    result = session.welcome(welcome)
    # The hub pings every welcome.hb ms; we ping only when it has been silent
    # for longer than that (half again), so idle links carry half the frames.
    interval = max(config.heartbeat_interval, 1.5 * welcome.hb / 1000)
    heartbeat = Heartbeat(
        interval,
        config.heartbeat_floor,
        config.heartbeat_ceiling,
        now=trio.current_time(),
        when_silent=True,
    )
    heartbeat.rtt = rtt
    rtt.add(sample)
    # hello.ack told the hub what we hold; what is released is acknowledged from here.
    session.inbound.acked = session.inbound.released
    protocol: LinkProtocol[bytes] = LinkProtocol(
        session.outbound,
        session.inbound,
        window=welcome.window,
        # Batches stay within what either side accepts (a message larger than
        # our own limit still goes, alone, up to the hub's).
        max_frame=min(welcome.max_size, config.max_message_size),
        encode=_identity,
        overhead=codec.overhead,
        max_batch=config.max_batch,
        ack_delay=config.ack_delay,
        coalescer=Coalescer(max_delay=config.coalesce_max_delay),
    )
    return ClientLink(conn, heartbeat, protocol, welcome.max_size, rest), welcome, result


async def _handshake(
    conn: ClientTransport, config: ClientConfig, codec: Codec, session: ClientSession[bytes]
) -> tuple[Welcome, list[str | bytes], float]:
    if conn.subprotocol not in (None, codec.subprotocol):
        raise HandshakeError(f"hub chose subprotocol {conn.subprotocol!r}")
    token = config.token
    if callable(token):  # a provider: a fresh credential for every link
        fresh = token()
        token = await fresh if inspect.isawaitable(fresh) else fresh
    started = trio.current_time()
    hello = session.hello(token, config.max_message_size)
    encoded = codec.encode(hello.wire())
    await conn.send(encoded if codec.binary else encoded.decode())
    messages = await conn.receive_some()
    rtt = trio.current_time() - started
    try:
        frame = parse_frame(codec.decode(messages[0]), sender="hub")
    except RemoteProtocolError as exc:
        raise HandshakeError(f"invalid welcome: {exc}") from None
    if isinstance(frame, Error):
        raise HandshakeError(f"hub refused hello: {frame.code}: {frame.msg}")
    if not isinstance(frame, Welcome):
        raise HandshakeError("the hub's first frame was not a welcome")
    return frame, messages[1:], rtt


def _identity(payload: bytes) -> bytes:
    return payload
