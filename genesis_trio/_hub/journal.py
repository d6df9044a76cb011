"""The hub's journal: records session changes, commits them in groups.

:class:`NullJournal` stands in without a session store: it releases every
change at once (nothing waits for a commit).


Every change the hub makes to a session (a message appended to its log, the
sequence number it has received, an acknowledgement, a new epoch, a
deletion) is recorded here. :meth:`Journal.run` writes what accumulated in
one transaction, then *releases* it: appended messages become sendable
(``OutboundLog.durable``) and received messages become acknowledgeable
(``InboundTracker.release``). While one batch is being written the next one
accumulates, so the commit rate adapts to the load (group commit). On a
failed write nothing is released; the batch is retried with backoff, and a
store that stays down closes every link with 4006 until it recovers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from .._core.codec import MSGPACK, EncodedBody
from .._core.histogram import LATENCY_BUCKETS, SIZE_BUCKETS, Histogram
from .._runtime.signal import Signal
from ..stores import SessionRow, SessionStore, StoreBatch, StoredEntry, StoredState, StoreError
from ..stores._cluster import StoreFenced
from ..stores._protocol import Forward
from .stats import StoreStatus

if TYPE_CHECKING:
    from .sessions import HubSession

log = logging.getLogger("genesis_trio.journal")


@attrs.define(eq=False)
class JournalCounters:
    """Mutable counters of the journal."""

    commits: int = 0
    rows_written: int = 0
    failures: int = 0
    last_error: str | None = None
    commit_seconds: Histogram = attrs.field(factory=lambda: Histogram(LATENCY_BUCKETS))
    """Time of each successful store write."""
    commit_rows: Histogram = attrs.field(factory=lambda: Histogram(SIZE_BUCKETS))
    """Rows written per commit (group-commit efficiency)."""


@attrs.frozen
class _Snapshot:
    session: HubSession
    epoch: int
    received: int
    last_seq: int


class NullJournal:
    """The journal of a hub without a session store: every change is released at once."""

    durable = False
    """Messages may be sent before any store has them (there is none)."""
    healthy = True

    def __init__(self, *, on_released: Callable[[HubSession], None]) -> None:
        self._on_released = on_released
        self.counters = JournalCounters()
        """Always zero: nothing is written."""

    def status(self) -> StoreStatus:
        """What the statistics say about the store: there is none."""
        return StoreStatus("none", True, 0, 0, 0)

    def touched(self, session: HubSession) -> None:
        """Received messages are acknowledgeable at once."""
        inbound = session.inbound
        if inbound.received > inbound.released:
            inbound.release(inbound.received)
        self._on_released(session)

    def appended(
        self,
        session: HubSession,
        seq: int,
        out: EncodedBody,
        stamp: float,
        shared: bool = False,
    ) -> None:
        """Nothing to store: the log is sendable already."""

    def acked(self, session: HubSession) -> None:
        """Nothing to store."""

    def rewritten(self, session: HubSession) -> None:
        """Nothing to store."""

    def deleted(self, session: HubSession) -> None:
        """Nothing to store."""

    async def wait_committed(self) -> None:
        """Everything is "committed" at once."""
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to run."""
        task_status.started()

    async def compact(self) -> None:
        """Nothing to compact."""
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Nothing to close."""
        await trio.lowlevel.checkpoint()


class Journal:
    """Records changes to sessions and commits them through a store."""

    durable = True
    """Messages are sent only once stored."""

    def __init__(
        self,
        store: SessionStore,
        *,
        on_released: Callable[[HubSession], None],
        on_outage: Callable[[], None],
        on_refused: Callable[[list[tuple[Forward, str]]], None] | None = None,
        outage_after: float = 10.0,
        close_timeout: float = 2.0,
        retry_cap: float = 2.0,
    ) -> None:
        self.store = store
        self._on_released = on_released
        self._on_outage = on_outage
        self.on_refused = on_refused
        """Told of the forwards a clustered store refused (after their commit)."""
        self.fenced: StoreFenced | None = None
        """Set when another node took a component this one wrote to (the hub stops)."""
        self.outage_after = outage_after
        self.close_timeout = close_timeout
        self.retry_cap = retry_cap
        self._batch = StoreBatch()
        self._dirty: dict[str, HubSession] = {}
        self._appended: dict[str, HubSession] = {}
        self._wake = Signal()
        self._committed = trio.lowlevel.ParkingLot()
        self._ids = itertools.count(1)
        self._forward_numbers = itertools.count(1)
        self.shares = getattr(store, "shares_bodies", True)
        """A message fanned out is stored once (else inline in every log)."""
        self._wall_offset: float | None = None  # set when run() starts: Trio's clock is there
        self.generation = 0
        """Incremented by every change recorded."""
        self.committed_generation = 0
        """The generation the last successful commit covered."""
        self.healthy = True
        """False while the store is failing."""
        self.counters = JournalCounters()

    # -- clocks -------------------------------------------------------------------

    def _offset(self) -> float:
        if self._wall_offset is None:
            self._wall_offset = time.time() - trio.current_time()
        return self._wall_offset

    def wall(self, trio_time: float) -> float:
        """Trio clock to wall clock (what the store keeps)."""
        return trio_time + self._offset()

    def trio_time(self, wall: float) -> float:
        """Wall clock back to this process's Trio clock."""
        return wall - self._offset()

    def status(self) -> StoreStatus:
        """What the statistics say about the store."""
        c = self.counters
        return StoreStatus(self.store.name, self.healthy, c.commits, c.rows_written, c.failures)

    async def open(self, load: Callable[[StoredState], int]) -> int:
        """Open the store and hand what it holds to ``load``; return how many sessions."""
        state = await self.store.open()
        loaded = load(state)
        self.start_ids_after(max(state.first_id - 1, max(state.messages, default=0)))
        return loaded

    async def aclose(self) -> None:
        """Commit what is pending (bounded by ``close_timeout``), then close the store."""
        with trio.move_on_after(self.close_timeout):
            await self.wait_committed()
        await self.store.aclose()

    def start_ids_after(self, highest: int) -> None:
        """Message ids continue after the highest one loaded."""
        self._ids = itertools.count(highest + 1)

    # -- recording ----------------------------------------------------------------

    def touched(self, session: HubSession) -> None:
        """The session's header changed (received, topics, epoch, truncation)."""
        if session.retired:
            return
        self._dirty[session.sid] = session
        self.generation += 1
        self._wake.set()

    def _msg_id(self, out: EncodedBody) -> int:
        if out.msg_id is None:
            out.msg_id = next(self._ids)
            self._batch.message(out.msg_id, out.encoded(MSGPACK))
        return out.msg_id

    def _entry(self, seq: int, out: EncodedBody, stamp: float, shared: bool) -> StoredEntry:
        if self.shares and (shared or out.msg_id is not None):
            return StoredEntry(seq, self._msg_id(out), self.wall(stamp))
        return StoredEntry(seq, 0, self.wall(stamp), out.encoded(MSGPACK))

    def appended(
        self, session: HubSession, seq: int, out: EncodedBody, stamp: float, shared: bool = False
    ) -> None:
        """A message entered the session's log (not sendable until committed).

        ``shared``: the same message goes to several sessions (stored once).
        The session's header is not rewritten for this: its ``last_seq`` is
        recovered at load time from the log itself (docs/operations.md).
        """
        if session.retired:
            return
        self._batch.append(session.sid, self._entry(seq, out, stamp, shared))
        self._appended[session.sid] = session
        self.generation += 1
        self._wake.set()

    def acked(self, session: HubSession) -> None:
        """The log's head moved (acknowledged or evicted): drop stored entries."""
        if session.retired:
            return
        self._batch.trim(session.sid, session.outbound.acked)
        self.touched(session)

    def rewritten(self, session: HubSession) -> None:
        """The log was renumbered (a new epoch): store it whole, re-release it."""
        if session.retired:
            return
        log_ = session.outbound
        log_.durable = 0
        self._batch.rewrite(
            session.sid, [self._entry(e.seq, e.payload, e.stamp, False) for e in log_.entries]
        )
        self.touched(session)

    def forwarded(self, forward: Forward) -> None:
        """A message for components on other nodes (a clustered store)."""
        self._batch.forwards.append(forward._replace(number=next(self._forward_numbers)))
        self.generation += 1
        self._wake.set()

    def consumed(self, component_id: str, upto: int) -> None:
        """A component's inbox is in its log up to absolute position ``upto`` (a cluster)."""
        consumed = self._batch.consumed
        consumed[component_id] = max(upto, consumed.get(component_id, 0))
        self.generation += 1
        self._wake.set()

    def gap_seen(self, component_id: str, gap: str) -> None:
        """The owner saw (and marked as truncation) a gap in a component's inbox."""
        self._batch.gaps[component_id] = gap
        self.generation += 1
        self._wake.set()

    def deleted(self, session: HubSession) -> None:
        """The session is gone."""
        self._batch.delete(session.sid)
        self._batch.cids[session.sid] = session.component_id
        self._dirty.pop(session.sid, None)
        self._appended.pop(session.sid, None)
        self.generation += 1
        self._wake.set()

    async def wait_committed(self) -> None:
        """Wait until everything recorded so far is stored."""
        target = self.generation
        while self.committed_generation < target:
            await self._committed.park()
        await trio.lowlevel.checkpoint()

    # -- committing ---------------------------------------------------------------

    def _row(self, session: HubSession) -> SessionRow:
        log_ = session.outbound
        gone = session.disconnected_at
        return SessionRow(
            session.sid,
            session.component_id,
            session.epoch,
            session.inbound.received,
            log_.last_seq,
            log_.acked,
            log_.truncated,
            tuple(sorted(session.topics)),
            None if gone is None else self.wall(gone),
            session.owner,
        )

    def _take(self) -> tuple[StoreBatch, list[_Snapshot], int]:
        batch, self._batch = self._batch, StoreBatch()
        snapshots = []
        dirty, appended = self._dirty, self._appended
        cids = batch.cids
        for session in dirty.values():
            batch.upsert(self._row(session))
        for sid, session in appended.items():
            dirty.setdefault(sid, session)
        for sid, session in dirty.items():
            cids[sid] = session.component_id
        for session in dirty.values():
            snapshots.append(
                _Snapshot(
                    session, session.epoch, session.inbound.received, session.outbound.last_seq
                )
            )
        self._dirty, self._appended = {}, {}
        return batch, snapshots, self.generation

    def _restore(self, batch: StoreBatch, snapshots: list[_Snapshot]) -> None:
        """Put a failed batch back in front of what was recorded since."""
        batch.absorb(self._batch)
        self._batch = batch
        for snap in snapshots:
            sid = snap.session.sid
            if sid not in batch.deletes:
                if sid in batch.sessions:
                    self._dirty.setdefault(sid, snap.session)
                else:
                    self._appended.setdefault(sid, snap.session)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit whatever accumulates, until cancelled (then one last bounded commit)."""
        task_status.started()
        try:
            while True:
                self._wake.clear()
                if not self._batch and not self._dirty and not self._appended:
                    await self._wake.wait()
                    continue
                await self._commit_with_retry()
        finally:
            with trio.move_on_after(self.close_timeout, shield=True):
                if self._batch or self._dirty or self._appended:
                    await self._commit_once()

    async def _commit_once(self) -> bool:
        batch, snapshots, generation = self._take()
        started = trio.current_time()
        try:
            refused = await self.store.write(batch)
        except StoreFenced as exc:
            self.fenced = exc
            self.counters.failures += 1
            self.counters.last_error = str(exc)
            return False
        except StoreError as exc:
            self.counters.failures += 1
            self.counters.last_error = str(exc)
            self._restore(batch, snapshots)
            return False
        c = self.counters
        c.commits += 1
        c.rows_written += batch.size
        c.commit_seconds.observe(trio.current_time() - started)
        c.commit_rows.observe(batch.size)
        self.committed_generation = generation
        for snap in snapshots:
            session = snap.session
            if session.epoch != snap.epoch:
                continue
            log_ = session.outbound
            if snap.last_seq > log_.durable:
                log_.durable = snap.last_seq
            inbound = session.inbound
            if snap.received > inbound.released:
                inbound.release(min(snap.received, inbound.received))
            self._on_released(session)
        self._committed.unpark_all()
        if refused and self.on_refused is not None:
            self.on_refused(refused)
        return True

    async def _commit_with_retry(self) -> None:
        if self.fenced is not None:
            raise self.fenced
        if await self._commit_once():
            if not self.healthy:
                log.warning("session store recovered")
            self.healthy = True
            return
        if self.fenced is not None:
            raise self.fenced
        log.error("session store write failed: %s", self.counters.last_error)
        self.healthy = False
        failing_since = trio.current_time()
        delay = 0.05
        closed = False
        while True:
            await trio.sleep(delay)
            if self.fenced is not None:
                raise self.fenced
            if await self._commit_once():
                log.warning(
                    "session store recovered after %.1f s", trio.current_time() - failing_since
                )
                self.healthy = True
                return
            delay = min(self.retry_cap, delay * 2)
            if not closed and trio.current_time() - failing_since >= self.outage_after:
                closed = True
                log.error(
                    "session store down for %.0f s: closing links with 4006", self.outage_after
                )
                self._on_outage()

    async def compact(self) -> None:
        """Ask the store to drop unreferenced message bodies (housekeeping)."""
        try:
            await self.store.compact()
        except StoreError as exc:
            log.warning("compaction failed: %s", exc)
