"""The resilient client: ``TranscendentalWebSocket``, a facade.

One object spans many links. Its session (sequence numbers, retained
outbound messages, inbound dedupe) survives reconnects, so each side's
application sees every message exactly once and in order. Its parts:

* :class:`~.link.LinkKeeper` -- connect, run one link (reader, writer,
  heartbeat), reconnect with backoff and resume;
* :class:`~.dispatch.Dispatcher` -- received messages to handlers or
  ``receive()``, in order, then released for acknowledgement;
* this facade -- configuration, sending, requests, subscriptions, lifecycle
  and statistics. :meth:`run` (or ``async with``) owns every task.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import attrs
import trio

from .._core.backoff import backoff
from .._core.codec import CODECS_BY_NAME
from .._core.config import ClientConfig
from .._core.errors import (
    ClosedError,
    ConnectionClosed,
    GenesisError,
    LocalProtocolError,
    RemoteProtocolError,
)
from .._core.frames import (
    HUB_ID,
    MAX_TYPE_LEN,
    Body,
    check_body,
    valid_component_id,
    valid_subscription,
    valid_topic,
)
from .._core.session import ClientSession, OutboundLog
from .._runtime.component import ComponentBase
from .._runtime.dispatch import Dispatcher
from .._runtime.groups import ShieldOnStart, close_hidden, start_hidden
from .keeper import LinkKeeper
from .transport import StreamFactory
from .types import (
    ClientCounters,
    ClientStatistics,
    ConnectionState,
    LinkEvent,
    LinkLost,
)

log = logging.getLogger("genesis_trio.client")

LARGEST = (1 << 53) - 1
"""The largest sequence number the size check assumes (a frame's size grows with its digits)."""


class TranscendentalWebSocket(ComponentBase):
    """The resilient client of a genesis_trio hub.

    Use it as ``async with TranscendentalWebSocket(uri, "my-id") as ws:``
    (connects, then runs in the background), or ``await nursery.start(ws.run)``,
    or call :meth:`connect` and :meth:`run` yourself. Options are the fields
    of :class:`ClientConfig`. ``uri`` may list several addresses (the nodes of
    a cluster): each failed connection attempt tries the next one.
    """

    def __init__(
        self,
        uri: str | Sequence[str],
        component_id: str | None = None,
        *,
        config: ClientConfig | None = None,
        topics: Iterable[str] = (),
        on_link_event: Callable[[LinkEvent], None] | None = None,
        stream_factory: StreamFactory | None = None,
        backoff_factory: Callable[[], Iterable[float]] | None = None,
        **options: Any,
    ) -> None:
        base = config if config is not None else ClientConfig()
        self.config: ClientConfig = attrs.evolve(base, **options) if options else base
        if component_id is None:
            component_id = "py-" + secrets.token_hex(6)
        if not valid_component_id(component_id):
            raise ValueError(f"invalid component id {component_id!r}")
        topics = tuple(topics)
        for topic in topics:
            if not valid_subscription(topic):
                raise ValueError(f"invalid topic name {topic!r}")
        uris = (uri,) if isinstance(uri, str) else tuple(uri)
        if not uris:
            raise ValueError("give the hub's address (or several: the nodes of a cluster)")
        self.uri = uris[0]
        """The (first) hub address."""
        self._codec = CODECS_BY_NAME[self.config.codec]
        self._frame_overhead = self._codec.overhead(LARGEST, LARGEST, 1)
        """The most a ``msg`` frame adds around one body (the size check's margin)."""
        self._last_to: object = object()
        """The last target ``send`` found valid (checked again only when it changes)."""
        self._last_topic: object = object()
        """The last topic ``publish`` found valid."""
        self._session: ClientSession[bytes] = ClientSession(
            component_id, OutboundLog(capacity=self.config.max_pending), topics=set(topics)
        )
        self._counters = ClientCounters()
        self._listeners: list[Callable[[LinkEvent], None]] = []
        if on_link_event is not None:
            self._listeners.append(on_link_event)
        cfg = self.config
        self._dispatcher = Dispatcher(
            cfg.inbox_size, self._counters, reply=self._reply, release=self._release
        )
        self._links = LinkKeeper(
            uris,
            cfg,
            self._codec,
            self._session,
            self._dispatcher,
            self._counters,
            stream_factory=stream_factory,
            backoff_factory=backoff_factory
            or (lambda: backoff(cfg.backoff_initial, 2.0, cfg.backoff_cap)),
            emit=self._emit,
        )
        self._ids = itertools.count(1)
        self._request_timeout = cfg.request_timeout
        self._closed = False
        self._running = False
        self._run_scope: trio.CancelScope | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._shield: trio.CancelScope | None = None

    # -- properties ---------------------------------------------------------------

    @property
    def component_id(self) -> str:
        """Our component id (chosen, or generated as ``py-<hex>``)."""
        cid = self._session.component_id
        assert cid is not None
        return cid

    @property
    def state(self) -> ConnectionState:
        """Where the client stands: a :class:`ConnectionState`."""
        return ConnectionState.CLOSED if self._closed else self._links.state

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._closed

    @property
    def session_id(self) -> str | None:
        """The hub-issued session id, once connected."""
        return self._session.sid

    @property
    def epoch(self) -> int:
        """The session epoch; it changes when the hub could not resume exactly."""
        return self._session.epoch

    @property
    def last_error(self) -> Any:
        """The most recent error frame from the hub not tied to a request (or None)."""
        return self._links.last_error

    # -- handlers -----------------------------------------------------------------

    def add_link_listener(self, listener: Callable[[LinkEvent], None]) -> None:
        """Call ``listener`` (synchronously) on every :class:`Connected`/:class:`Disconnected`."""
        self._listeners.append(listener)

    def _emit(self, event: LinkEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("link listener failed (ignored)")

    # -- sending ------------------------------------------------------------------

    async def send(self, to: str, type: str, data: Any = None) -> int:
        """Send ``type``/``data`` to component ``to``; return the sequence number.

        Returns once the message is in the session's outbound buffer (it will
        be delivered exactly once, across reconnects). Waits while the buffer
        is full, at most ``send_timeout`` (then :class:`SendTimeout`). Always a
        cancellation point; while there is room, a schedule point only every
        few calls (so a burst of sends leaves in few frames).
        """
        if (
            type.__class__ is str
            and 0 < len(type) <= MAX_TYPE_LEN
            and (to is self._last_to or self._valid_target(to))
        ):
            body = (
                {"type": type, "to": to} if data is None else {"type": type, "data": data, "to": to}
            )
            return await self._links.enqueue(self._encode(body), self._check_open)
        return await self._enqueue({"type": type, "data": data, "to": to})  # raises ValueError

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        """Publish to every subscriber of ``topic``; return the sequence number."""
        if (
            type.__class__ is str
            and 0 < len(type) <= MAX_TYPE_LEN
            and (topic is self._last_topic or self._valid_topic(topic))
        ):
            body = (
                {"type": type, "topic": topic}
                if data is None
                else {"type": type, "data": data, "topic": topic}
            )
            return await self._links.enqueue(self._encode(body), self._check_open)
        return await self._enqueue({"type": type, "data": data, "topic": topic})  # ValueError

    def _valid_target(self, to: object) -> bool:
        """``check_body``'s check of ``to``; remembers the last valid one (a stream's target)."""
        if valid_component_id(to) or to == HUB_ID:
            self._last_to = to
            return True
        return False

    def _valid_topic(self, topic: object) -> bool:
        """``check_body``'s check of a client's ``topic``; remembers the last valid one."""
        if valid_topic(topic):
            self._last_topic = topic
            return True
        return False

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the client is closed")

    async def _enqueue(self, body: Body) -> int:
        if body.get("data", 0) is None:
            del body["data"]
        self._check_open()
        try:
            check_body(body, from_client=True)
        except RemoteProtocolError as exc:  # our caller's input, not the hub's fault
            raise ValueError(str(exc)) from None
        return await self._links.enqueue(self._encode(body), self._check_open)

    def _encode(self, body: Body) -> bytes:
        """A checked body, encoded; raises if closed, or if it is too large to send."""
        if self._closed:
            raise ClosedError("the client is closed")
        payload = self._codec.encode(body)
        link = self._links.link
        limit = link.max_size if link is not None else self.config.max_message_size
        if len(payload) + self._frame_overhead > limit:
            raise ValueError(f"message of {len(payload)} bytes exceeds the limit of {limit} bytes")
        return payload

    def _release(self, generation: int, seq: int) -> None:
        self._links.release(generation, seq)

    async def flush(self) -> None:
        """Wait until the hub has acknowledged everything sent so far.

        Bound it with ``trio.fail_after`` / ``move_on_after`` as needed.
        """
        await self._links.flush(self._check_open)

    # -- subscriptions --------------------------------------------------------------

    async def subscribe(self, *topics: str) -> None:
        """Subscribe to ``topics``; returns once the hub applies it (or on the next link).

        Raises :class:`ClosedError` once the client is closed.
        """
        await self._change_topics(topics, remove=False)

    async def unsubscribe(self, *topics: str) -> None:
        """Drop subscriptions; returns once the hub applies it (or on the next link)."""
        await self._change_topics(topics, remove=True)

    @property
    def topics(self) -> frozenset[str]:
        """Current subscriptions (re-applied on every reconnect)."""
        return frozenset(self._session.topics)

    async def _change_topics(self, topics: tuple[str, ...], *, remove: bool) -> None:
        self._check_open()
        for topic in topics:
            if not valid_subscription(topic):
                raise ValueError(f"invalid topic name {topic!r}")
        current = self._session.topics
        changed = tuple(t for t in topics if (t in current) == remove)
        if remove:
            current.difference_update(changed)
        else:
            current.update(changed)
        await self._links.change_topics(changed, remove=remove)

    # -- receiving ----------------------------------------------------------------

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> TranscendentalWebSocket:
        await self.connect()  # one attempt per address: a hub that is down fails `async with`
        self._exit_stack = await start_hidden(self._run_until_closed, self._abandon_run)
        return self

    async def _run_until_closed(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """:meth:`run` for ``async with``: once started, only :meth:`aclose` ends it, so a
        block left because it was cancelled still flushes and says ``bye`` (bounded by
        ``close_timeout``) over a link that is still running. Until then (and if
        ``__aenter__`` fails) a cancellation ends it as it would end :meth:`run`."""
        with trio.CancelScope() as self._shield:
            await self.run(task_status=ShieldOnStart(self._shield, task_status))

    def _abandon_run(self) -> None:
        """``__aenter__`` failed after starting :meth:`run`: let cancellation reach it."""
        if self._shield is not None:
            self._shield.shield = False

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()  # ends run() (shielded from the block's cancellation)
        finally:
            if self._run_scope is not None:
                self._run_scope.cancel()
            stack, self._exit_stack = self._exit_stack, None
            await close_hidden(stack, exc_type, exc, tb)
        return None

    async def connect(self) -> None:
        """Open a link and complete the hello/welcome handshake (one attempt per address).

        Raises :class:`HandshakeError` (refused upgrade, bad welcome, timeout)
        or ``OSError`` (no TCP connection). No-op while already connected.
        """
        self._check_open()
        await self._links.connect()

    async def wait_connected(self) -> None:
        """Wait until a link is up (returns at once if it is)."""
        await self._links.wait_connected(self._check_open)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Operate until closed or cancelled: keep a link up, dispatch messages.

        Connects (with retries, like every reconnect) unless :meth:`connect`
        did; ``task_status.started()`` once a link is up, so
        ``await nursery.start(ws.run)`` returns connected. Reconnects with
        backoff and resumes the session after link loss. Raises
        :class:`ConnectionClosed` for close codes that forbid retrying
        (policy, bad handshake, replaced, unsupported version) or when
        ``reconnect`` is off, and the last connection error after
        ``max_reconnect_attempts`` failed attempts.
        """
        if self._running:
            raise LocalProtocolError("run() is already running")
        if self._closed:
            raise ClosedError("the client is closed")
        self._running = True
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._run_scope = nursery.cancel_scope
                nursery.start_soon(self._dispatcher.run)
                try:
                    await self._links.supervise(self.component_id, task_status.started)
                except LinkLost as exc:  # re-raised below as the public class, not in a group
                    failure = ConnectionClosed(exc.code, exc.reason)
                except (GenesisError, OSError) as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            self._running = False
            self._run_scope = None

    async def aclose(self, *, end_session: bool = True) -> None:
        """Flush (bounded by ``close_timeout``), end the session, close. Idempotent.

        With ``end_session`` the hub forgets the session (``bye``); without
        it the session waits for a resume that will not come until it expires.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        link = await self._links.close(end_session)
        self._closed = True
        self._dispatcher.close()
        if self._run_scope is not None:
            self._run_scope.cancel()
        if link is not None:
            link.scope.cancel()

    # -- statistics ---------------------------------------------------------------

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of this client's metrics."""
        return self._counters.snapshot(
            component_id=self._session.component_id,
            state=self.state,
            pending=len(self._session.outbound),
            inbox=len(self._dispatcher.inbox),
            rtt=self._links.rtt,
            breaker=self._links.breaker,
        )

    def get_stats(self) -> dict[str, Any]:
        """The metrics as a plain dict."""
        return attrs.asdict(self.statistics())
