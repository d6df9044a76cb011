"""A hub as one node of a cluster: sessions claimed from a shared store, messages between nodes.

With a :class:`~genesis_trio.stores.ClusterStore` every component's session
lives on one node at a time (docs/cluster.md):

* **arriving**: a ``hello`` for a component this node does not hold first
  claims it in the store (:meth:`ClusterNode.arrive`). If a live node holds
  it, that node is asked to let go (it closes its link with 4001, commits,
  releases) and the claim is retried, up to ``handover_timeout``; a node
  that died holds nothing once its lease lapsed. The claimed session is
  loaded with its log, then its inbox is drained into it, and only then
  does the ``hello`` proceed: the client resumes exactly, on any node.
  While a component arrives, messages to it (and every publish) wait, so
  nothing overtakes what was forwarded to it before.
* **forwarding**: a message for a component this node does not hold, and
  every publish (for the subscribers on other nodes), is recorded as a
  :class:`~genesis_trio.stores.Forward` in the journal: it reaches the
  target's inbox in the same commit that makes the sender's message
  acknowledgeable. A forward to a component with no session is answered
  ``unknown_target`` to its sender after the commit.
* **draining**: the node waits on its wake list; it moves its components'
  inbox entries into their logs (in order, under one lock), and the commit
  that stores them also trims the inbox: exactly once.
* **fencing**: a write touching a component another node has claimed fails
  as a whole (:class:`~genesis_trio.stores.StoreFenced`): the hub stops
  (exit status 3 under the CLI), as its memory can no longer be trusted.
"""

from __future__ import annotations

import logging
import math
import secrets
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import orjson
import trio

from .._core.codec import MSGPACK, EncodedBody
from .._core.errors import CloseCode, ErrorCode
from .._core.frames import Error, Hello
from ..stores._cluster import ClusterStore, StoreFenced
from ..stores._protocol import Forward, StoreError
from .journal import Journal
from .sessions import ANONYMOUS_PREFIX, HubSession, SessionTable

log = logging.getLogger("genesis_trio.cluster")

DRAIN_BATCH: Final = 256
"""Inbox entries moved per component per round."""
POLL: Final = 1.0
"""Seconds between looks at the inboxes when nothing wakes the node."""
ADOPT_EVERY: Final = 3.0
"""Seconds (at least three node leases) between looks for dead nodes' components."""
ADOPT_BATCH: Final = 1000
"""Components adopted per look at most."""

Reporter = Callable[[Error], None]


class Appender(Protocol):
    """What the node needs of the router: append drained messages."""

    def blocks(self, target: HubSession) -> bool:
        """True when ``target`` is connected and its log full."""
        ...

    def append_all(self, targets: Sequence[HubSession], out: EncodedBody) -> None:
        """Append ``out`` to every target's log."""
        ...


class ClusterNode:
    """This hub's part in the cluster (see the module docstring)."""

    def __init__(
        self,
        store: ClusterStore,
        journal: Journal,
        table: SessionTable,
        *,
        handover_timeout: float = 5.0,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self._stats = stats
        self.journal = journal
        self.table = table
        self.router: Appender | None = None
        """Set by the hub (appends drained messages)."""
        self.handover_timeout = handover_timeout
        self.arriving: dict[str, trio.Event] = {}
        """Components being claimed, by id: messages to them wait."""
        self._settled = trio.lowlevel.ParkingLot()
        self._drain_lock = trio.Lock()
        self.forwarded = 0
        """Messages (and publishes) handed to other nodes."""
        self.drained = 0
        """Messages moved from inboxes into this node's sessions."""
        self.claims = 0
        """Components claimed from the store (arrivals from elsewhere or from nowhere)."""
        self.handovers = 0
        """Components this node let go of because another node asked."""
        self.adopted = 0
        """Components taken over from dead nodes without a client asking."""

    # -- routing ------------------------------------------------------------------

    def waits(self, to: str | None) -> bool:
        """True while a message to ``to`` (a publish, for None) must wait for an arrival."""
        arriving = self.arriving
        return bool(arriving) and (to is None or to in arriving)

    async def settled(self, to: str | None) -> None:
        """Wait until :meth:`waits` is False."""
        while self.waits(to):
            await self._settled.park()

    def forward(
        self,
        body: dict[str, object],
        *,
        to: str | None = None,
        topic: str | None = None,
        exclude: tuple[str, ...] = (),
        report: Reporter | None = None,
        n: int | None = None,
    ) -> None:
        """Record ``body`` for other nodes' components (in the next commit)."""
        tag = None
        if report is not None:
            tag = (weakref.WeakMethod(report) if hasattr(report, "__self__") else report, n,
                   body.get("id"))  # fmt: skip
        packed = EncodedBody(body).encoded(MSGPACK)
        self.journal.forwarded(Forward(to, topic, packed, exclude, tag))
        self.forwarded += 1

    def refused(self, refused: list[tuple[Forward, str]]) -> None:
        """The store refused forwards (after the commit): tell their senders."""
        for forward, why in refused:
            tag = forward.tag
            if not isinstance(tag, tuple):
                continue
            ref, n, rid = tag
            report = ref() if isinstance(ref, weakref.WeakMethod) else ref
            if report is None:
                continue
            if why == "unknown":
                report(Error(ErrorCode.UNKNOWN_TARGET, f"no component {forward.to!r}", n, rid))
            else:
                report(Error(ErrorCode.LIMIT, f"the inbox of {forward.to!r} is full", n, rid))

    # -- arriving -------------------------------------------------------------------

    async def arrive(
        self, hello: Hello, *, take: bool = True
    ) -> tuple[tuple[CloseCode, str] | None, str | None]:
        """Claim the session a ``hello`` names, unless this node holds it.

        Returns why the link is refused (None: go on) and, for a new
        anonymous session, the id claimed for it (the table must use it).
        ``take``: ask a live node holding it to let go (else: refused).
        """
        table = self.table
        cid = hello.id
        assigned = None
        if cid is None and hello.sid is not None:
            known = table.by_sid.get(hello.sid)
            cid = known.component_id if known is not None else None
        if cid is None and hello.sid is None:  # a new anonymous session: claim its new id
            cid = assigned = ANONYMOUS_PREFIX + secrets.token_hex(6)
        elif cid is not None and cid in table.by_id:
            return None, None
        marks: list[str] = []
        try:
            if cid is not None:
                while cid in self.arriving:  # another link of the same component: after it
                    await self.arriving[cid].wait()
                if cid in table.by_id:
                    return None, None
            self._mark(marks, cid if cid is not None else "$sid:" + str(hello.sid))
            return await self._claim(cid, hello.sid, marks, take), assigned
        finally:
            for key in marks:
                self.arriving.pop(key).set()
            self._settled.unpark_all()

    def _mark(self, marks: list[str], key: str) -> None:
        self.arriving[key] = trio.Event()
        marks.append(key)

    async def _claim(
        self, cid: str | None, sid: str | None, marks: list[str], take: bool
    ) -> tuple[CloseCode, str] | None:
        journal, store = self.journal, self.store
        deadline = trio.current_time() + self.handover_timeout
        asked = -1.0
        try:
            await journal.wait_committed()  # this node's own deletes of it are in the store
            while True:
                claim = await store.claim(cid, sid)
                if claim.kind != "busy":
                    break
                assert claim.holder is not None
                assert claim.component_id is not None
                if not take:
                    return CloseCode.TRY_AGAIN_LATER, f"held by node {claim.holder}"
                if trio.current_time() - asked >= 1.0:  # again: it may have been arriving
                    asked = trio.current_time()
                    await store.ask_release(claim.holder, claim.component_id)
                if trio.current_time() >= deadline:
                    return CloseCode.STORE_UNAVAILABLE, f"session held by node {claim.holder}"
                await trio.sleep(0.05)
            if claim.component_id is None:
                return None  # an unknown session id: the table makes a new session
            self.claims += 1
            cid = claim.component_id
            if cid not in self.arriving:
                self._mark(marks, cid)
            await journal.wait_committed()  # forwards to it recorded before now are in its inbox
            async with self._drain_lock:
                table = self.table
                if claim.state is not None and cid not in table.by_id:
                    table.load(claim.state, trio.current_time(), journal.trio_time)
                session = table.by_id.get(cid)
                while session is not None:  # away while it arrives: it never blocks
                    done = await self._drain_one(session)
                    await journal.wait_committed()
                    if done or session.connected:
                        break
        except StoreError as exc:
            return CloseCode.STORE_UNAVAILABLE, str(exc)[:100]
        return None

    # -- draining and letting go ----------------------------------------------------------

    async def _drain_one(self, session: HubSession) -> bool:
        """Move inbox entries into the session's log; True if all fitted."""
        cid = session.component_id
        bodies = await self.store.inbox(cid, 0, DRAIN_BATCH)
        if not bodies:
            return True
        router = self.router
        assert router is not None
        moved = 0
        for packed in bodies:
            if self.table.by_id.get(cid) is not session or router.blocks(session):
                break
            router.append_all((session,), EncodedBody(None, msgpack=packed))
            moved += 1
        if moved:
            self.journal.consumed(cid, moved)
            self.drained += moved
        return moved == len(bodies) < DRAIN_BATCH

    async def _drain(self) -> bool:
        """One round over this node's inboxes; True when nothing was left behind."""
        done = True
        async with self._drain_lock:
            for cid in await self.store.dirty():
                session = self.table.by_id.get(cid)
                if session is not None and cid not in self.arriving:
                    done = await self._drain_one(session) and done
            await self.journal.wait_committed()
        return done

    async def _let_go(self, cid: str) -> None:
        """Another node wants ``cid``: close its link, commit, release."""
        if cid in self.arriving:
            return  # ours is the newer claim: the other retries, then replaces
        session = self.table.by_id.get(cid)
        if session is not None:
            link = session.connection
            if link is not None:
                link.close_soon(CloseCode.REPLACED, "taken over on another node")
            self.table.unload(session)
            self.handovers += 1
        await self.journal.wait_committed()
        await self.store.release(cid)

    async def adopt_orphans(self, most: int = ADOPT_BATCH) -> int:
        """Take over (up to ``most``) components whose node died; return how many.

        Someone must hold every session: to drain its inbox and, if its
        client never comes back, to expire it. An adopted session waits like
        any disconnected one; its client resumes it here or on any node.
        """
        adopted, cursor = 0, 0
        while adopted < most:
            cursor, found = await self.store.orphans(cursor)
            for cid in found:
                if cid in self.table.by_id or cid in self.arriving:
                    continue
                refused, _ = await self.arrive(Hello(id=cid), take=False)
                if refused is None and cid not in self.table.by_id:
                    await self.store.release(cid)  # claimed, but it has no session: let go
                adopted += 1
            if cursor == 0:
                break
        self.adopted += adopted
        return adopted

    async def cluster_stats(self) -> dict[str, Any]:
        """Every live node's statistics (``nodes``, by id) and their sums (``totals``)."""
        nodes = {
            node: orjson.loads(raw) for node, raw in sorted((await self.store.node_stats()).items())
        }
        totals: dict[str, float] = {}
        for stats in nodes.values():
            for name, value in stats.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[name] = totals.get(name, 0) + value
        return {"nodes": nodes, "totals": totals}

    async def _publish_stats(self) -> None:
        if self._stats is not None:
            stats = self._stats()
            stats["cluster"] = {
                "forwarded": self.forwarded,
                "drained": self.drained,
                "claims": self.claims,
                "handovers": self.handovers,
                "adopted": self.adopted,
            }
            packed = orjson.dumps(stats, default=str, option=orjson.OPT_NON_STR_KEYS)
            await self.store.publish_stats(packed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain inboxes, answer hand-over requests, publish statistics, until cancelled."""
        task_status.started()
        timeout = POLL
        published = -math.inf
        adopted = trio.current_time()
        while True:
            try:
                now = trio.current_time()
                if now - published >= POLL:
                    published = now
                    await self._publish_stats()
                if now - adopted >= max(ADOPT_EVERY, 3 * self.store.lease):
                    adopted = now
                    await self.adopt_orphans()
                work = await self.store.wait_wake(timeout)
                for item in work:
                    if item.startswith("r"):
                        await self._let_go(item[1:])
                timeout = POLL if await self._drain() else 0.05
            except StoreFenced:
                raise  # this node's memory can no longer be trusted: stop
            except StoreError as exc:
                log.warning("cluster: %s", exc)
                await trio.sleep(POLL)
