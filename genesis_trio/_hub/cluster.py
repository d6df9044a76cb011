"""A hub as one node of a cluster: sessions claimed from a shared store (docs/cluster.md).

With a :class:`~genesis_trio.stores.ClusterStore` every component's session
lives on one node at a time:

* **arriving** (:meth:`ClusterNode.arrive`): a ``hello`` for a component this
  node does not hold claims it; a live holder is asked to let go (it closes
  its link with 4001), a dead one holds nothing once its lease lapsed. The
  session is loaded, its inbox drained, then this node's other inboxes,
  and only then does the ``hello`` proceed: an exact resume on any node.
  Messages to an arriving component (and every publish) wait meanwhile.
* **forwarding**: what this node does not hold goes into its holder's inbox
  in the sender's own commit (a :class:`~genesis_trio.stores.Forward`): one
  entry per node for a publish, not one per subscriber.
* **draining** (:mod:`.inboxes`): inbox entries move into logs in order; the
  commit records how far (an absolute position: exactly once, retries
  included). A session whose own inbox is not empty takes local messages
  through it too (:attr:`HubSession.via_inbox`), so nothing overtakes.
* **letting go**: a node asked for a component closes its link, commits,
  and releases it with what its inbox had not delivered to it.
* **fencing**: a write touching a component another node has claimed fails
  whole (:class:`~genesis_trio.stores.StoreFenced`): the hub stops (exit 3).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
import trio

from .._core.errors import CloseCode
from .._core.frames import Hello
from ..stores._cluster import ClusterStore, StoreFenced
from ..stores._protocol import StoreError
from .forwarding import Forwarding
from .inboxes import Drain
from .journal import Journal
from .sessions import ANONYMOUS_PREFIX, SessionTable
from .stats import totals

log = logging.getLogger("genesis_trio.cluster")

POLL: Final = 1.0
"""Seconds between looks at the inboxes when nothing wakes the node."""
ADOPT_EVERY: Final = 3.0
"""Seconds (at least three node leases) between looks for dead nodes' components."""
ADOPT_BATCH: Final = 1000
"""Components adopted per look at most."""

Refusal = tuple[CloseCode, str]


class ClusterNode(Forwarding):
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
        self.journal = journal
        self.table = table
        self._stats = stats
        self.drain = Drain(store, journal, table)
        """This node's inboxes, moved into its sessions."""
        self.handover_timeout = handover_timeout
        self.arriving: dict[str, trio.Event] = {}
        """Components being claimed (and ``$sid:...`` for resumes by session id): messages
        to them wait."""
        self.leaving: dict[str, trio.Event] = {}
        """Components this node is letting go of: messages to them wait."""
        self._unreleased: set[str] = set()
        """Components maybe this node's in the store, not loaded, to release (:meth:`_hold`)."""
        self._claiming = 0
        """Claims sent, not yet answered."""
        self._topics: Counter[str] = Counter()
        """Topics of components claimed but not loaded, or let go but not released."""
        self._settled = trio.lowlevel.ParkingLot()
        self.forwarded = 0
        """Messages (and publishes) handed to other nodes."""
        self.claims = 0
        """Components claimed from the store (arrivals from elsewhere or from nowhere)."""
        self.handovers = 0
        """Components this node let go of because another node asked."""
        self.adopted = 0
        """Components taken over from dead nodes without a client asking."""
        self.fenced = False
        """Set when this node learned it lost its lease or a component (it stops)."""

    # -- routing ------------------------------------------------------------------

    def waits(self, to: str | None, topic: str | None = None) -> bool:
        """True while a message to ``to`` must wait for an arrival or a departure of it.

        A publish (``to`` None) on ``topic`` waits while a component subscribed to it
        is claimed here but not loaded, or let go but not released (this node would
        deliver it to nobody, and the store skips this node), and while a claim's
        answer (its topics) is awaited.
        """
        if to is not None:
            return to in self.arriving or to in self.leaving
        if self._claiming or self._unreleased:
            return True
        if topic is None:
            return bool(self.arriving or self.leaving)
        return self._topics[topic] > 0

    async def settled(self, to: str | None, topic: str | None = None) -> None:
        """Wait until :meth:`waits` is False."""
        while self.waits(to, topic):
            await self._settled.park()

    def _moving(self, topics: Iterable[str], sign: int) -> None:
        """Topics of components between this node and the store (publishes on them wait)."""
        self._topics.update({t: sign for t in topics})
        if sign < 0:
            self._topics = +self._topics  # drop those back at zero
            self._settled.unpark_all()

    # -- arriving -------------------------------------------------------------------

    async def arrive(self, hello: Hello, *, take: bool = True) -> tuple[Refusal | None, str | None]:
        """Claim the session a ``hello`` names, unless this node holds it.

        Returns why the link is refused (None: go on) and the id claimed for
        a new anonymous session (the table must use it if it makes one; call
        :meth:`settle` with it afterwards). ``take``: ask a live node holding
        it to let go (else: refused).
        """
        table = self.table
        cid, sid = hello.id, hello.sid
        if cid is not None and cid.startswith(ANONYMOUS_PREFIX):
            cid = None  # reserved: an anonymous session is resumed by its session id
        if cid is None and sid is not None:
            known = table.by_sid.get(sid)
            if known is not None:
                if known.anonymous:
                    return None, None
                sid = None  # a named session's sid alone resumes nothing: a new anonymous one
        if cid is not None and cid in table.by_id:
            return None, None
        marks: list[str] = []
        try:
            with trio.move_on_after(self.handover_timeout + 3 * self.store.timeout):
                if cid is not None or sid is not None:
                    key = cid if cid is not None else "$sid:" + str(sid)
                    while key in self.arriving:  # another link of the same one: after it
                        await self.arriving[key].wait()
                    known = table.by_sid.get(sid) if cid is None and sid is not None else None
                    if (cid is not None and cid in table.by_id) or (
                        known is not None and known.anonymous
                    ):
                        return None, None
                    self._mark(marks, key)
                    refused, found = await self._claim(cid, sid, marks, take)
                    if refused is not None or found or cid is not None:
                        return refused, None
                # a new anonymous session (or an unknown session id without a name)
                assigned = ANONYMOUS_PREFIX + secrets.token_hex(6)
                self._mark(marks, assigned)
                refused, _ = await self._claim(assigned, None, marks, take)
                return refused, (assigned if refused is None else None)
            return (CloseCode.STORE_UNAVAILABLE, "the session could not be claimed in time"), None
        finally:
            for key in marks:
                self.arriving.pop(key).set()
            self._settled.unpark_all()

    async def settle(self, *cids: str | None) -> None:
        """After a handshake: let go of claimed ids that did not become sessions here."""
        for cid in cids:
            if cid is not None:
                try:
                    async with self.drain.lock:  # what its node inbox holds goes with it
                        if cid not in self.table.by_id and cid not in self.arriving:
                            await self._release(cid)
                except StoreError as exc:
                    log.warning("cluster: could not release %r (later): %s", cid, exc)

    def _mark(self, marks: list[str], key: str) -> None:
        self.arriving[key] = trio.Event()
        marks.append(key)

    async def _claim(
        self, cid: str | None, sid: str | None, marks: list[str], take: bool
    ) -> tuple[Refusal | None, bool]:
        """Claim and load; (why refused, whether a session was found)."""
        drain = self.drain
        paused = [False]  # from the claim until loaded: its messages may be in this node's inbox
        try:
            return await self._claim_and_load(cid, sid, marks, take, paused)
        finally:
            if paused[0]:
                drain.paused -= 1

    async def _claim_and_load(
        self, cid: str | None, sid: str | None, marks: list[str], take: bool, paused: list[bool]
    ) -> tuple[Refusal | None, bool]:
        journal, store, drain = self.journal, self.store, self.drain
        deadline = trio.current_time() + self.handover_timeout
        asked = -math.inf
        try:
            while True:
                drain.paused += 1
                paused[0] = True
                answered = False
                self._claiming += 1  # publishes wait from here: any recorded before are
                try:  # committed first (the claim moves its subscriptions to this node)
                    await journal.wait_committed()  # (and this node's own deletes of it)
                    claim = await store.claim(cid, sid)
                    answered = True
                finally:
                    if not answered and cid is not None:
                        self._hold(cid)  # taken or not: let go of it before the inbox moves
                    if answered and claim.state is not None:  # until loaded (below)
                        self._moving(claim.state.sessions[0].row.topics, 1)
                    self._claiming -= 1
                    self._settled.unpark_all()
                if claim.component_id is None:
                    return None, False  # an unknown session id
                if claim.kind != "busy":
                    break
                drain.paused -= 1
                paused[0] = False
                assert claim.holder is not None
                if not take:
                    return (CloseCode.TRY_AGAIN_LATER, f"held by node {claim.holder}"), False
                if trio.current_time() - asked >= 1.0:  # again: it may have been arriving
                    asked = trio.current_time()
                    await store.ask_release(claim.holder, claim.component_id)
                if trio.current_time() >= deadline:
                    why = f"session held by node {claim.holder}"
                    return (CloseCode.STORE_UNAVAILABLE, why), False
                await trio.sleep(0.05)
        except StoreError as exc:
            return (CloseCode.STORE_UNAVAILABLE, str(exc)[:100]), False
        self.claims += 1
        cid = claim.component_id
        if cid not in self.arriving:
            self._mark(marks, cid)
        loaded = False
        try:
            await journal.wait_committed()  # forwards to it recorded before: in its inbox
            async with drain.lock:
                table = self.table
                if claim.state is not None and cid not in table.by_id:
                    table.load(claim.state, trio.current_time(), journal.trio_time)
                    # its own inbox may hold what its last node had not delivered: until
                    # that is in its log, everything for it goes behind (nothing overtakes)
                    table.by_id[cid].via_inbox = True
                drain.claimed(cid, claim.upto)
                drain.paused -= 1
                paused[0] = False
                loaded = True
                if claim.state is not None:  # in the table now: publishes reach it here
                    self._moving(claim.state.sessions[0].row.topics, -1)
                session = table.by_id.get(cid)
                while session is not None and not session.connected:  # away: never blocks
                    if await drain.some([session], node=False):
                        break
            while drain.node_upto < claim.upto:  # what it sent to this node before, first
                async with drain.lock:
                    if await drain.some((), node=True):
                        break
                if drain.paused:  # another arrival holds this node's inbox a moment
                    await trio.sleep(0.01)
        except StoreError as exc:
            return (CloseCode.STORE_UNAVAILABLE, str(exc)[:100]), False
        finally:
            if not loaded:  # claimed, not loaded: let go of it before the inbox moves
                self._hold(cid)
                if claim.state is not None:
                    self._moving(claim.state.sessions[0].row.topics, -1)
        return None, claim.state is not None

    # -- releasing ----------------------------------------------------------------------

    def _hold(self, cid: str) -> None:
        """``cid`` may be this node's in the store but is not loaded: its messages in this
        node's inbox must not be passed over until it is released (the serving loop)."""
        if cid not in self._unreleased:
            self._unreleased.add(cid)
            self.drain.paused += 1

    async def _release(self, cid: str) -> None:
        """Release ``cid`` with what this node's inbox holds for it (the caller holds the
        drain lock); if that fails, hold it back for a later try."""
        try:
            await self.store.release(cid)
        except StoreError:
            self._hold(cid)
            raise
        if cid in self._unreleased:
            self._unreleased.discard(cid)
            self.drain.paused -= 1

    async def _release_held(self) -> None:
        """Try again to release what a failure left held (see :meth:`_hold`)."""
        for cid in sorted(self._unreleased):
            async with self.drain.lock:  # (an arrival loads under it: checked inside)
                if cid in self.table.by_id or cid in self.arriving:
                    self._unreleased.discard(cid)  # claimed (and loaded) again since
                    self.drain.paused -= 1
                    continue
                await self._release(cid)

    # -- letting go -------------------------------------------------------------------------

    async def _let_go(self, cid: str) -> None:
        """Another node wants ``cid``: close its link, commit, release."""
        if cid in self.arriving or cid in self.leaving:
            return  # ours is the newer claim: the other retries, then replaces
        self.leaving[cid] = trio.Event()  # messages to it (and publishes on its topics) wait
        topics: tuple[str, ...] = ()
        try:
            async with self.drain.lock:  # nothing moves from this node's inbox meanwhile
                session = self.table.by_id.get(cid)
                if session is not None:
                    topics = tuple(session.topics)
                    self._moving(topics, 1)  # until released (a failure holds them all)
                if session is not None:
                    await self.drain.some((), node=True)  # delivered here: less to copy
                    link = session.connection
                    if link is not None:
                        link.close_soon(CloseCode.REPLACED, "taken over on another node")
                    self.table.unload(session)
                    self.drain.forget(cid)
                    self.handovers += 1
                await self.journal.wait_committed()
                if cid not in self.table.by_id and cid not in self.arriving:  # (not claimed
                    await self._release(cid)  # again meanwhile) with what it had not delivered
        finally:
            self.leaving.pop(cid).set()
            self._moving(topics, -1)

    async def adopt_orphans(self, most: int = ADOPT_BATCH) -> int:
        """Take over (up to ``most``) components nobody alive holds; return how many.

        Someone must hold every session: to drain its inbox and, if its
        client never comes back, to expire it. An adopted session waits like
        any disconnected one; its client resumes it here or on any node.
        Never past ``max_sessions``: a full node leaves them to the others.
        """
        adopted, cursor = 0, 0
        table = self.table
        while adopted < most:
            cursor, found = await self.store.orphans(cursor)
            for cid in found:
                if len(table.by_id) >= table.config.max_sessions:
                    self.adopted += adopted
                    return adopted
                if cid in table.by_id or cid in self.arriving:
                    continue
                refused, _ = await self.arrive(Hello(id=cid), take=False)
                if refused is None:
                    adopted += 1
                await self.settle(cid)  # claimed, but it has no session: let go
            if cursor == 0:
                break
        self.adopted += adopted
        return adopted

    # -- statistics -------------------------------------------------------------------

    async def cluster_stats(self) -> dict[str, Any]:
        """Every live node's statistics (``nodes``, by id) and their sums (``totals``)."""
        found = sorted((await self.store.node_stats()).items())
        nodes = {node: orjson.loads(raw) for node, raw in found}
        return {"nodes": nodes, "totals": totals(nodes.values())}

    async def _publish_stats(self) -> None:
        if self._stats is not None:
            stats = self._stats()
            drain = self.drain
            stats["cluster"] = {
                "forwarded": self.forwarded,
                "drained": drain.drained,
                "spilled": drain.spilled,
                "claims": self.claims,
                "handovers": self.handovers,
                "adopted": self.adopted,
                "gaps": drain.gaps,
            }
            packed = orjson.dumps(stats, default=str, option=orjson.OPT_NON_STR_KEYS)
            await self.store.publish_stats(packed)

    # -- the node's tasks ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain inboxes, answer hand-over requests, publish statistics, adopt, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._adopting)
            task_status.started()
            await self._serving()

    async def _serving(self) -> None:
        timeout = POLL
        published = -math.inf
        while True:
            try:
                if trio.current_time() - published >= POLL:
                    published = trio.current_time()
                    await self._publish_stats()
                if self._unreleased:
                    await self._release_held()
                work = await self.store.wait_wake(timeout)
                for item in work:
                    if item.startswith("r"):
                        await self._let_go(item[1:])
                timeout = POLL if await self.drain.round() else 0.05
            except StoreFenced:
                self.fenced = True
                raise  # this node's memory can no longer be trusted: stop
            except StoreError as exc:
                log.warning("cluster: %s", exc)
                await trio.sleep(POLL)

    async def _adopting(self) -> None:
        every = max(ADOPT_EVERY, 3 * self.store.lease)
        while True:
            await trio.sleep(every)
            try:
                await self.adopt_orphans()
            except StoreFenced:
                self.fenced = True
                raise
            except StoreError as exc:
                log.warning("cluster: adoption: %s", exc)
