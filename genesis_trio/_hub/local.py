"""In-process components (the seed's QuantumTunnel): a hub session with no socket.

:class:`LocalComponent` has the API of the Python client
(:class:`~genesis_trio.TranscendentalWebSocket`: send, publish, request,
reply, subscribe, handlers, receive, statistics) but lives in the hub's
process: it attaches to a hub session directly, as its link. What it sends
is appended to the targets' sessions like any client's message (shared
body, no framing, no decoding); what the session holds for it is handed to
the same dispatcher the client uses, in order, and acknowledged once
handled. So ordering, exactly-once delivery and durability (through the
session store) are those of any session. Authorization does not apply
(the component is the hub's own program).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Protocol

import attrs
import trio

from .._core.codec import EncodedBody
from .._core.config import HubConfig
from .._core.errors import (
    CloseCode,
    ClosedError,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
)
from .._core.frames import HUB_ID, Body, Error, Hello, check_body, valid_subscription
from .._runtime.component import ComponentBase
from .._runtime.dispatch import Dispatcher
from .._runtime.groups import close_hidden, start_hidden
from .._runtime.signal import Signal
from .handles import NO_ONE, Wake
from .journal import Journal, NullJournal
from .router import Router
from .sessions import HubSession, SessionTable
from .stats import HubCounters, LocalCounters, LocalStatistics

log = logging.getLogger("genesis_trio.local")

SEND_TURNS: Final = 64
"""Sends between two schedule points (as the client's send): every send is a cancellation
point before it takes effect, but a sender in a loop appends a burst before the receiver
runs, rather than paying a task switch per message."""


class _PullOnWake(Signal):
    """A session's wake-up signal that hands messages over at once (no waiting task)."""

    __slots__ = ("_pull",)

    def __init__(self, pull: Callable[[], None]) -> None:
        super().__init__()
        self._pull = pull

    def set(self) -> None:
        """Where a link's writer would be woken: pull."""
        self._pull()


class LocalHost(Protocol):
    """What a local component needs of its hub."""

    @property
    def config(self) -> HubConfig:
        """The hub's configuration."""
        ...

    @property
    def counters(self) -> HubCounters:
        """The hub's counters."""
        ...

    @property
    def sessions(self) -> SessionTable:
        """The session table."""
        ...

    @property
    def router(self) -> Router:
        """Routes messages into sessions."""
        ...

    @property
    def journal(self) -> Journal | NullJournal:
        """Stores sessions (a null one without a store)."""
        ...

    async def arrive(self, hello: Hello) -> tuple[tuple[CloseCode, str] | None, str | None]:
        """In a cluster, take the session ``hello`` names from another node."""
        ...


class LocalComponent(ComponentBase):
    """A component inside the hub's process (see the module docstring).

    Use ``async with hub.local("id") as component`` or start
    ``await nursery.start(component.run)``. ``send`` returns the message's
    sequence number in the target's session and ``publish`` the number of
    subscribers reached; both return once the message is in its targets'
    sessions (and stored, with a session store). Leaving ``async with`` or
    :meth:`aclose` keeps the session (messages for the component wait for
    it, as for a disconnected client) unless ``end_session=True``.
    """

    def __init__(self, host: LocalHost, component_id: str, *, topics: tuple[str, ...] = ()) -> None:
        for topic in topics:
            if not valid_subscription(topic):
                raise ValueError(f"invalid topic name {topic!r}")
        self._host = host
        self._component_id = component_id
        self._topics = set(topics)
        self._counters = LocalCounters()
        self._dispatcher = Dispatcher(
            host.config.window, self._counters, reply=self._reply, release=self._release
        )
        self._session: HubSession | None = None
        self._ids = itertools.count(1)
        self._closed = False
        self._ended: tuple[int, str] | None = None
        self._scope: trio.CancelScope | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._wake_before: Wake = NO_ONE
        self._turns = SEND_TURNS

    @property
    def component_id(self) -> str:
        """This component's id."""
        return self._component_id

    # -- sending -------------------------------------------------------------------

    async def send(self, to: str, type: str, data: Any = None) -> int:
        """Send to component ``to``; return its sequence number in ``to``'s session.

        Raises :class:`UnknownComponent` when the hub holds no session for ``to``.
        """
        return await self._enqueue({"type": type, "data": data, "to": to})

    async def publish(self, topic: str, type: str, data: Any = None) -> int:
        """Publish to ``topic``; return the number of subscribers it reached."""
        return await self._enqueue({"type": type, "data": data, "topic": topic})

    async def _enqueue(self, body: Body) -> int:
        await self._turn()  # cancelled: nothing was sent
        session = self._attached()
        if body.get("data", 0) is None:
            del body["data"]
        try:
            check_body(body, from_client=True)
        except RemoteProtocolError as exc:
            raise ValueError(str(exc)) from None
        host = self._host
        router = host.router
        body["from"] = self.component_id
        out = EncodedBody(body)
        if out.size > host.config.max_message_size:  # TypeError if it cannot be encoded
            raise ValueError(f"message of {out.size} bytes exceeds max_message_size")
        self._counters.messages_sent += 1
        self._counters.requests_sent += "id" in body
        host.counters.messages_in += 1
        to = body.get("to")
        if to == HUB_ID:
            await router.hub_message(session, None, body, 0, self._report)
            return 0
        if to is not None:
            return await router.send_to(to, body, self._committed)
        result = await router.deliver_anywhere(body)
        await self._committed()
        return result

    async def _turn(self) -> None:
        """Before a send: always a cancellation point, a schedule point every
        :data:`SEND_TURNS` sends."""
        if self._turns > 0:
            self._turns -= 1
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            self._turns = SEND_TURNS
            await trio.lowlevel.checkpoint()

    async def _committed(self) -> None:
        """After a send: wait until it is stored (nothing to wait for without a store)."""
        journal = self._host.journal
        if journal.durable:
            await journal.wait_committed()

    def _report(self, error: Error) -> None:
        self._counters.errors_contained += 1
        log.warning("%s: the hub answered %s: %s", self.component_id, error.code, error.msg)

    async def flush(self) -> None:
        """Wait until what was sent is stored (at once without a session store)."""
        await self._host.journal.wait_committed()

    # -- subscriptions and presence -----------------------------------------------

    async def subscribe(self, *topics: str) -> None:
        """Subscribe to ``topics`` (system topics such as ``$presence`` included).

        Raises ValueError for an invalid name or past the subscription limits.
        """
        for topic in topics:
            if not valid_subscription(topic):
                raise ValueError(f"invalid topic name {topic!r}")
        self._topics.update(topics)
        if self._session is not None:
            refused = self._host.sessions.subscribe(self._session, topics)
            if refused:
                self._topics.difference_update(refused)
                raise ValueError(f"subscription limit reached: {', '.join(refused)}"[:200])
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, *topics: str) -> None:
        """Drop subscriptions."""
        self._topics.difference_update(topics)
        if self._session is not None:
            self._host.sessions.unsubscribe(self._session, topics)
        await trio.lowlevel.checkpoint()

    @property
    def topics(self) -> frozenset[str]:
        """Current subscriptions."""
        return frozenset(self._topics)

    # -- the session (LinkHandle) -----------------------------------------------------

    def close_soon(self, code: int, reason: str) -> None:
        """The hub ends this component's hold on its session (replaced, disconnected)."""
        if self._ended is None:
            self._ended = (code, reason)
        session = self._session
        if session is not None:
            self._let_go(session)
        if self._scope is not None:
            self._scope.cancel()

    def committed(self, now: float) -> None:
        """New messages became deliverable (stored)."""
        self._pull()

    def _attached(self) -> HubSession:
        if self._closed:
            raise ClosedError("the component is closed")
        session = self._session
        if session is None or session.connection is not self:
            raise ClosedError("the component is not running (use async with, or run())")
        return session

    def _attach(self) -> HubSession:
        host = self._host
        table = host.sessions
        now = trio.current_time()
        existing = table.by_id.get(self.component_id)
        if existing is not None:  # ours to continue (in-process, no credential needed)
            hello = Hello(
                id=self.component_id,
                sid=existing.sid,
                epoch=existing.epoch,
                ack=existing.outbound.acked,
                topics=tuple(self._topics | existing.topics),
            )
        else:
            hello = Hello(id=self.component_id, topics=tuple(self._topics))
        evicted = table.make_room(hello, now)
        if evicted is None:
            raise RuntimeError("the hub is at its session limit")
        host.counters.sessions_evicted += evicted
        opened = table.open(hello, now)
        if opened.replaced is not None:
            host.counters.replaced_connections += 1
            opened.replaced.close_soon(CloseCode.REPLACED, "replaced by a local component")
        session = opened.session
        self._topics = set(session.topics)
        if not opened.recovered:
            self._dispatcher.new_generation()
        self._wake_before = session.wake
        session.wake = _PullOnWake(self._pull)
        session.attach(self, now)
        table.joined(session, opened.recovered)
        self._session = session
        self._ended = None
        self._pull()  # what waited for it (replayed in order)
        return session

    def _release(self, generation: int, seq: int) -> None:
        session = self._session
        if (
            generation == self._dispatcher.generation
            and session is not None
            and session.connection is self
        ):
            self._host.router.apply_ack(session, seq)

    def _pull(self) -> None:
        """Hand what the session holds to the dispatcher, within the window (never waits).

        Called where the session's writer would be woken (an append, an
        acknowledgement, a commit): no task of its own, so a message costs
        no extra task switch on its way in.
        """
        session = self._session
        if session is None or session.connection is not self:
            return
        out = session.outbound
        room = self._host.config.window - (out.sent - out.acked)
        entries = out.take(room) if room > 0 else []
        if not entries:
            return
        deliver = self._dispatcher.deliver
        for entry in entries:
            deliver(entry.seq, entry.payload.body)
        self._dispatcher.woken()
        self._counters.messages_received += len(entries)
        self._host.counters.messages_out += len(entries)

    def _let_go(self, session: HubSession) -> None:
        """Detach from the session and give it back its own wake-up signal."""
        if isinstance(session.wake, _PullOnWake):
            session.wake = self._wake_before
        if session.connection is self:
            session.detach(trio.current_time())

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the session and dispatch its messages until closed or cancelled.

        Raises :class:`ConnectionClosed` when the hub takes the session away
        (4001: a client with the same id took over; an operator's disconnect; 4004:
        its handlers left messages unacknowledged past the hub's retention budget).
        """
        if self._closed:
            raise ClosedError("the component is closed")
        if self._scope is not None:
            raise LocalProtocolError("run() is already running")
        refused, _ = await self._host.arrive(Hello(id=self.component_id))  # from another node
        if refused is not None:
            raise ConnectionClosed(*refused)
        session = self._attach()
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                await self._dispatcher.run()
        finally:
            self._scope = None
            self._let_go(session)
        ended = self._ended
        if ended is not None and not self._closed:
            raise ConnectionClosed(*ended)

    async def __aenter__(self) -> LocalComponent:
        self._exit_stack = await start_hidden(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        finally:  # even when cancelled: the hidden nursery must be closed here
            stack, self._exit_stack = self._exit_stack, None
            await close_hidden(stack, exc_type, exc, tb)
        return None

    async def aclose(self, *, end_session: bool = False) -> None:
        """Stop; keep the session for the next start unless ``end_session``. Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        session = self._session
        if session is not None and session.connection is self:
            self._let_go(session)
            if end_session:
                self._host.sessions.remove(session, "bye")
        self._dispatcher.close()
        if self._scope is not None:
            self._scope.cancel()
        await trio.lowlevel.checkpoint()

    # -- statistics ---------------------------------------------------------------------

    def statistics(self) -> LocalStatistics:
        """A frozen snapshot of this component's metrics."""
        c = self._counters
        session = self._session
        return LocalStatistics(
            component_id=self.component_id,
            attached=session is not None and session.connection is self,
            messages_sent=c.messages_sent,
            messages_received=c.messages_received,
            requests_sent=c.requests_sent,
            errors_contained=c.errors_contained,
            pending=len(session.outbound) if session is not None else 0,
        )

    def get_stats(self) -> dict[str, Any]:
        """The metrics as a plain dict."""
        return attrs.asdict(self.statistics())
