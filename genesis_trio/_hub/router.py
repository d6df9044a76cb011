"""Routing: a client's messages into the sessions they are addressed to.

:class:`Router` takes each ``msg``/``batch`` a link admits and, body by body,
resolves the targets (a component id, ``$hub``, or a topic's subscribers)
and appends **one shared** :class:`EncodedBody` to every target's outbound
log, atomically (synchronously, so no other task sees half a fan-out). When a
connected target's log is full the rest of the frame is held in the link's
backlog and routed later, waiting (bounded by ``slow_consumer_timeout``, then
the slow target is closed with 4004) -- the link's reader never waits.
Messages to ``$hub`` run the hub's handlers; their replies, and the hub's own
sends and publishes, go through the same appends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import trio

from .._core.coalesce import FanoutWindow
from .._core.codec import EncodedBody
from .._core.config import HubConfig
from .._core.errors import CloseCode, ErrorCode, RemoteError, UnknownComponent
from .._core.frames import HUB_ID, Body, Error, MessageFrame, Rejected
from .._core.link import Backlogged
from .auth import Authorizer
from .budget import RetentionBudget
from .cluster import ClusterNode
from .hubcalls import HubCalls, HubHandler, SystemHandler, always
from .link import HubLink
from .sessions import HubSession, SessionRecorder, SessionTable
from .stats import HubCounters

log = logging.getLogger("genesis_trio.hub")


class Router(HubCalls):
    """Routes messages between sessions (see the module docstring)."""

    def __init__(
        self,
        config: HubConfig,
        counters: HubCounters,
        table: SessionTable,
        recorder: SessionRecorder,
        handlers: dict[str, HubHandler],
        authorizer: Authorizer | None = None,
        *,
        on_reply: Callable[[Body], None] | None = None,
        system: dict[str, SystemHandler] | None = None,
    ) -> None:
        self.authorizer = authorizer
        """Decides each send and publish of authenticated links (None: all allowed)."""
        self.config = config
        self.counters = counters
        self.table = table
        self.recorder = recorder
        self.handlers = handlers
        self.on_reply = on_reply
        """Takes replies addressed to ``$hub`` (answers to the hub's own requests)."""
        self.system = system if system is not None else {}
        """Built-in ``$hub`` requests, used when no handler of that type was added."""
        self.fanout = FanoutWindow()
        self.budget = RetentionBudget(
            table, config.max_retained_bytes, recorder.acked, counters, config.slow_consumer_timeout
        )
        """The hub-wide bound on retained bytes (checked as appends add up)."""
        self.cluster: ClusterNode | None = None
        """This hub's part in a cluster: messages for other nodes' components (None: alone)."""

    # -- targets ---------------------------------------------------------------

    def by_id(self, component_id: str) -> Callable[[], Sequence[HubSession]]:
        """The session of ``component_id`` (resolved again after every wait)."""
        sessions = self.table.by_id

        def resolve() -> Sequence[HubSession]:
            target = sessions.get(component_id)
            return (target,) if target is not None and not target.via_inbox else ()

        return resolve

    def by_topic(self, topic: str) -> Callable[[], Sequence[HubSession]]:
        """The subscribers of ``topic`` (resolved again after every wait).

        In a cluster, not those taking messages through their inbox (forwarded).
        """
        subscribers = self.table.subscribers
        return lambda: tuple(s for s in subscribers.get(topic, ()) if not s.via_inbox)

    def by_sid(self, sid: str) -> Callable[[], Sequence[HubSession]]:
        """The session ``sid``, while it lives (a reply to the requester's own session)."""
        sessions = self.table.by_sid

        def resolve() -> Sequence[HubSession]:
            target = sessions.get(sid)
            return (target,) if target is not None else ()

        return resolve

    # -- what a link's pipeline calls --------------------------------------------

    def apply_ack(self, session: HubSession, seq: int) -> None:
        """The client acknowledged up to ``seq`` (docs/protocol.md §2.5)."""
        if session.outbound.ack(seq, sent_only=True):
            session.room.unpark_all()
            session.wake.set()
            self.recorder.acked(session)

    def admit(self, link: HubLink, frame: MessageFrame, size: int) -> None:
        """Take a ``msg``/``batch``: route it now, or hold it behind those waiting."""
        session = link.session
        if frame.ack is not None:
            self.apply_ack(session, frame.ack)
        skip = session.inbound.admit(frame.seq, len(frame.bodies), self.config.window)
        if skip:
            self.counters.duplicates_dropped += skip
            if skip == len(frame.bodies):
                return
        link.units = len(frame.bodies)
        if link.backlog:
            link.hold(frame, skip, size)
            return
        route_now = self.route_now
        bodies = frame.bodies
        seq = frame.seq
        for i in range(skip, len(bodies)):
            body = bodies[i]
            n = seq + i
            if type(body) is Rejected:
                if not self._reject(link, body, n):
                    return
                continue
            assert not isinstance(body, Rejected)
            if not route_now(link, body, n):
                link.hold(frame, i, size)
                break
        self.recorder.touched(session)  # acknowledged once stored

    async def route_held(self, link: HubLink, item: Backlogged) -> bool:
        """Route a held frame's remaining bodies, waiting for room; False if the link ended."""
        frame = item.frame
        assert frame is not None
        bodies = frame.bodies
        for i in range(item.next, len(bodies)):
            item.next = i
            body = bodies[i]
            n = frame.seq + i
            if type(body) is Rejected:
                if not self._reject(link, body, n):
                    return False
                continue
            assert not isinstance(body, Rejected)
            if not self.route_now(link, body, n) and not await self._route_later(link, body, n):
                return False
        item.next = len(bodies)
        self.recorder.touched(link.session)
        return True

    def say_bye(self, link: HubLink) -> None:
        """``bye``: forget the session, close the link with 1000."""
        self.table.remove(link.session)
        link.close_soon(CloseCode.NORMAL, "bye")

    def _reject(self, link: HubLink, body: Rejected, n: int) -> bool:
        """Answer an invalid body (its number is consumed); False if the link must close."""
        error = body.error
        self.counters.errors_contained += 1
        link.report(Error(error.code, str(error), n))
        link.session.inbound.processed(n)
        if link.count_bad_frame(trio.current_time()):
            link.close_soon(CloseCode.TOO_MANY_ERRORS, "too many malformed frames")
            return False
        return True

    def route_now(self, link: HubLink, body: Body, n: int) -> bool:
        """Route message ``n`` without waiting, if possible (the common case).

        Returns False when it must wait (a full target, or a handler on the
        hub): then :meth:`_route_later` does it. Synchronous, so it costs no
        coroutine per message and is atomic for Trio.
        """
        session = link.session
        to = body.get("to")
        identity = link.identity
        if (
            identity is not None
            and self.authorizer is not None
            and not self._allowed(link, body, n)
        ):
            session.inbound.processed(n)
            return True
        table = self.table
        targets: Sequence[HubSession]
        cluster = self.cluster
        topic = None
        if to is not None:
            if cluster is not None and cluster.waits(to):
                return False  # being claimed (maybe loaded already): after its inbox
            target = table.by_id.get(to)
            if target is not None and target.via_inbox:
                target = None  # in a cluster: through its inbox, behind what waits there
            if target is None:
                if to == HUB_ID:
                    return False
                if cluster is not None:  # on another node, or nowhere (then answered later)
                    body["from"] = session.component_id
                    cluster.forward(body, to=to, report=link.report, n=n)
                    session.inbound.processed(n)
                    self.counters.messages_in += 1
                    return True
                link.report(
                    Error(
                        ErrorCode.UNKNOWN_TARGET,
                        f"no component {to!r} on this hub",
                        n,
                        body.get("id"),
                    )
                )
                targets = ()
            else:
                targets = (target,)
        else:
            topic = body.get("topic")
            if topic is None:
                link.report(
                    Error(ErrorCode.NO_TARGET, "a message needs 'to' or 'topic'", n, body.get("id"))
                )
                targets = ()
            else:
                if cluster is not None and cluster.waits(None, topic):
                    return False
                targets = tuple(s for s in table.subscribers.get(topic, ()) if not s.via_inbox)
        if targets:
            if not self.has_room(targets):
                return False
            body["from"] = session.component_id
            self.append_all(targets, EncodedBody(body))
        if cluster is not None and topic is not None:
            body["from"] = session.component_id
            cluster.forward(body, topic=topic)
        session.inbound.processed(n)
        self.counters.messages_in += 1
        return True

    def _allowed(self, link: HubLink, body: Body, n: int) -> bool:
        """The authorizer's word on one body; a refusal is answered ``forbidden``."""
        identity = link.identity
        authorizer = self.authorizer
        assert identity is not None
        assert authorizer is not None
        kind: str = body["type"]
        to = body.get("to")
        if to is not None:
            allowed = authorizer.may_send(identity, to, kind)
            where = f"send to {to!r}"
        else:
            topic = body.get("topic", "")
            allowed = authorizer.may_publish(identity, topic, kind)
            where = f"publish to {topic!r}"
        if not allowed:
            self.counters.forbidden += 1
            link.report(Error(ErrorCode.FORBIDDEN, f"may not {where}", n, body.get("id")))
        return allowed

    def may_subscribe(self, link: HubLink, topics: tuple[str, ...]) -> tuple[str, ...]:
        """The topics the link's identity may subscribe to; the others are answered."""
        identity, authorizer = link.identity, self.authorizer
        if identity is None or authorizer is None:
            return topics
        allowed = tuple(t for t in topics if authorizer.may_subscribe(identity, t))
        if len(allowed) < len(topics):
            refused = [t for t in topics if t not in allowed]
            self.counters.forbidden += len(refused)
            text = f"may not subscribe to {', '.join(refused)}"[:200]
            link.report(Error(ErrorCode.FORBIDDEN, text))
        return allowed

    async def _route_later(self, link: HubLink, body: Body, n: int) -> bool:
        """The slow path of :meth:`route_now`; False if the link went away meanwhile."""
        session = link.session
        inbound = session.inbound
        body["from"] = session.component_id
        to = body.get("to")
        if to == HUB_ID:
            inbound.processed(n)
            self.counters.messages_in += 1
            await self.hub_message(link.session, link.identity, body, n, link.report)
            return link.attached

        def valid() -> bool:
            return link.attached and inbound.received == n - 1

        if await self.deliver_anywhere(body, valid, link.report, n) < 0:
            return False
        inbound.processed(n)
        self.counters.messages_in += 1
        return True

    # -- appending ----------------------------------------------------------------

    async def deliver_anywhere(
        self,
        body: Body,
        valid: Callable[[], bool] = always,
        report: Callable[[Error], None] | None = None,
        n: int | None = None,
    ) -> int:
        """Deliver ``body`` (with its ``from``) to its ``to`` or ``topic``, here and elsewhere.

        Returns the sessions of this hub it reached, or -1 (see :meth:`deliver`).
        In a cluster, what this hub does not hold is forwarded to the other
        nodes (``report`` hears of an unknown target after the commit).
        """
        to, topic = body.get("to"), body.get("topic")
        resolve = self.by_id(to) if to is not None else self.by_topic(body["topic"])
        count = await self.deliver(resolve, EncodedBody(body), valid, arrival=to, topic=topic)
        cluster = self.cluster
        if cluster is not None and count >= 0:
            if to is None:
                cluster.forward(body, topic=body["topic"])
            elif count == 0:
                cluster.forward(body, to=to, report=report, n=n)
        return count

    async def send_to(self, to: str, body: Body, committed: Callable[[], Awaitable[None]]) -> int:
        """Deliver ``body`` to the component ``to``, here or on another node; once stored.

        Returns its sequence number in that component's session (0 when on
        another node: it is known there only). Raises
        :class:`UnknownComponent` when no session for ``to`` exists, and
        :class:`RemoteError` (``limit``) when its inbox in a cluster is full.
        """
        alone = self.cluster is None  # in a cluster, what is not here is forwarded
        if alone and to not in self.table.by_id:
            raise UnknownComponent(f"no component {to!r} on this hub")
        refusals: list[Error] = []

        def refused(error: Error) -> None:  # after the commit (a cluster)
            refusals.append(error)

        seq = 0
        if await self.deliver_anywhere(body, report=refused) > 0:
            seq = self.table.by_id[to].outbound.last_seq
        elif alone:
            raise UnknownComponent(f"component {to!r} left while the message waited")
        await committed()
        for error in refusals:
            if error.code == ErrorCode.UNKNOWN_TARGET:
                raise UnknownComponent(f"no component {to!r} in the cluster")
            raise RemoteError(error.code, error.msg)
        return seq

    async def deliver(
        self,
        resolve: Callable[[], Sequence[HubSession]],
        out: EncodedBody,
        valid: Callable[[], bool] = always,
        arrival: str | None = "",
        topic: str | None = None,
    ) -> int:
        """Append ``out`` to every target's log, atomically; return the target count.

        Waits while a connected target's log is full; past the slow-consumer
        timeout that target is closed (4004) and receives under retention
        rules instead. Returns -1 if ``valid()`` fails after a wait. In a
        cluster, also waits while the component ``arrival`` (a publish on
        ``topic``: None) is arriving or leaving (``""``: never).
        """
        deadline = math.inf
        cluster = self.cluster
        while True:
            if cluster is not None and arrival != "" and cluster.waits(arrival, topic):
                await cluster.settled(arrival, topic)
                if not valid():
                    return -1
                continue
            targets = resolve()
            blocked = next((t for t in targets if self.blocks(t)), None)
            if blocked is None:
                break
            if deadline == math.inf:
                deadline = trio.current_time() + self.config.slow_consumer_timeout
            with trio.move_on_at(deadline) as scope:
                await blocked.room.park()
            if scope.cancelled_caught:
                for target in resolve():
                    link = target.connection
                    if link is not None and self.blocks(target):
                        self.counters.slow_consumers_closed += 1
                        link.close_soon(CloseCode.SLOW_CONSUMER, "buffer full: consumer too slow")
            if not valid():
                return -1
        if not valid():
            return -1
        self.append_all(targets, out)
        return len(targets)

    @staticmethod
    def blocks(target: HubSession) -> bool:
        """A connected target whose log is full: wait for it (the sender itself included).

        A client sending to itself waits for its own acknowledgements, which
        its reader handles while the message waits.
        """
        return not target.outbound.has_room and target.connection is not None

    @classmethod
    def has_room(cls, targets: Sequence[HubSession]) -> bool:
        """True when no target blocks (see :meth:`blocks`)."""
        return not any(cls.blocks(target) for target in targets)

    def append_all(
        self, targets: Sequence[HubSession], out: EncodedBody, force: HubSession | None = None
    ) -> None:
        """Append ``out`` to every target's log (synchronously: atomic for Trio).

        A connected target with room gets it; one that is away drops its oldest
        messages to make room (retention). ``force`` is appended to even when
        full (a notice that must not wait).
        """
        now = trio.current_time()
        evicted = 0
        waits = False
        recorder = self.recorder
        shared = len(targets) > 1
        if shared:
            self.fanout.appended(len(targets), now)
        size = out.size
        for target in targets:
            log_ = target.outbound
            if target.connection is not None and (log_.has_room or target is force):
                log_.append_unchecked(out, now, size)
                target.wake.set()
                dropped = 0
            else:
                dropped = log_.append_evicting(out, now, size)[1]
                evicted += dropped
                waits = True
            recorder.appended(target, log_.last_seq, out, now, shared)
            if dropped:
                recorder.acked(target)
        if waits:  # for a receiver that is away: kept encoded only
            out.compact()
        evicted += self.budget.appended(size * len(targets))
        if evicted:
            self.counters.messages_evicted += evicted
