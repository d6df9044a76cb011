"""The session store protocol and the plain data it carries.

The hub keeps its working state in memory and journals every change into a
:class:`StoreBatch`; a committer writes batches atomically (group commit)
through a :class:`SessionStore`, and only then does the hub acknowledge the
messages and deliver them (docs/operations.md). Implementations:
:class:`MemoryStore` (a process-local store, for tests: a new hub given the
same object sees the old hub's sessions), ``SQLiteStore`` (the embedded
default), and later Redis. A store is plain data in, plain data out.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import attrs

from .._core.errors import GenesisError


class StoreError(GenesisError):
    """The session store failed; nothing in the failed batch was acknowledged."""


@attrs.frozen
class SessionRow:
    """A session's persistent header."""

    sid: str
    component_id: str
    epoch: int
    received: int
    """Highest client sequence number stored (what the next welcome acknowledges)."""
    last_seq: int
    """Highest sequence number given to an outbound message."""
    acked: int
    """The client's cumulative acknowledgement of outbound messages."""
    truncated: bool
    """Retention dropped unacknowledged messages: the next resume is not exact."""
    topics: tuple[str, ...]
    disconnected_at: float | None
    """Wall-clock time the session lost its link (None: connected when written)."""
    owner: str | None = None
    """The identity (subject) that owns the session, when the hub authenticates."""


class StoredEntry(NamedTuple):
    """One retained outbound message of a session.

    A message sent to one session carries its ``body`` inline (``msg_id``
    0); one fanned out to several is stored once and referenced by
    ``msg_id``.
    """

    seq: int
    msg_id: int
    stamp: float
    """Wall-clock time it was appended."""
    body: bytes | None = None
    """The MessagePack body, when stored inline."""


@attrs.frozen
class StoredSession:
    """A session as loaded at start-up."""

    row: SessionRow
    entries: tuple[StoredEntry, ...]


@attrs.frozen
class StoredState:
    """Everything a store holds."""

    sessions: tuple[StoredSession, ...]
    messages: dict[int, bytes]
    """Message bodies (MessagePack) by id."""
    first_id: int = 1
    """The lowest message id the hub may give (a clustered node's block)."""


class Forward(NamedTuple):
    """A message for components of other nodes (a clustered store puts it in their inboxes).

    ``to`` names one component; otherwise every subscriber of ``topic`` on
    other nodes (this node delivered to its own). ``spill``: a message for
    this node's component ``to`` that must go behind what its inbox holds.
    ``tag`` is the hub's, opaque to stores (who to tell of a refusal).
    """

    to: str | None
    topic: str | None
    body: bytes
    spill: bool = False
    tag: object = None
    number: int = 0
    """Given by the journal, increasing: a store applies each forward once."""


@attrs.define(eq=False)
class StoreBatch:
    """Changes to apply atomically, kept normalised so their order never matters.

    Applying a batch means, for each session: delete it (``deletes``), or
    replace its whole log (``rewrites``), then add ``appends``, then drop
    entries up to ``trims``, then write its header (``sessions``). Recording
    a delete or a rewrite discards what the batch held for that session.
    """

    sessions: dict[str, SessionRow] = attrs.field(factory=dict)
    messages: dict[int, bytes] = attrs.field(factory=dict)
    appends: dict[str, list[StoredEntry]] = attrs.field(factory=dict)
    trims: dict[str, int] = attrs.field(factory=dict)
    deletes: set[str] = attrs.field(factory=set)
    rewrites: dict[str, list[StoredEntry]] = attrs.field(factory=dict)
    cids: dict[str, str] = attrs.field(factory=dict)
    """The component id of every session touched (a clustered store fences on them)."""
    consumed: dict[str, int] = attrs.field(factory=dict)
    """How far each component's inbox was moved into its log: an absolute position,
    by component id; ``""``: this node's own inbox (clustered stores only)."""
    gaps: dict[str, str] = attrs.field(factory=dict)
    """Inbox gaps seen (and marked as truncation), by component id; ``#topic``: a
    topic's gap in this node's own inbox (clustered stores)."""
    forwards: list[Forward] = attrs.field(factory=list)
    """Messages for other nodes' components (clustered stores only)."""

    def __bool__(self) -> bool:
        return bool(
            self.sessions
            or self.messages
            or self.appends
            or self.trims
            or self.deletes
            or self.rewrites
            or self.consumed
            or self.gaps
            or self.forwards
        )

    def upsert(self, row: SessionRow) -> None:
        """Write (or overwrite) a session header."""
        self.deletes.discard(row.sid)
        self.sessions[row.sid] = row

    def message(self, msg_id: int, body: bytes) -> None:
        """Store a message body (shared by every log that references it)."""
        self.messages[msg_id] = body

    def append(self, sid: str, entry: StoredEntry) -> None:
        """Add an entry to a session's log."""
        self.appends.setdefault(sid, []).append(entry)

    def trim(self, sid: str, seq: int) -> None:
        """Drop a session's entries numbered ``seq`` or lower."""
        if seq > self.trims.get(sid, 0):
            self.trims[sid] = seq

    def rewrite(self, sid: str, entries: list[StoredEntry]) -> None:
        """Replace a session's whole log (a new epoch renumbers it)."""
        self.appends.pop(sid, None)
        self.trims.pop(sid, None)
        self.rewrites[sid] = list(entries)

    def delete(self, sid: str) -> None:
        """Forget a session and its log."""
        self.sessions.pop(sid, None)
        self.appends.pop(sid, None)
        self.trims.pop(sid, None)
        self.rewrites.pop(sid, None)
        self.deletes.add(sid)

    def absorb(self, later: StoreBatch) -> None:
        """Fold a batch recorded after this one into this one (for a retry)."""
        for sid in later.deletes:
            self.delete(sid)
        for sid, entries in later.rewrites.items():
            self.rewrite(sid, entries)
        for sid, entries in later.appends.items():
            for entry in entries:
                self.append(sid, entry)
        for sid, seq in later.trims.items():
            self.trim(sid, seq)
        for row in later.sessions.values():
            self.upsert(row)
        self.messages.update(later.messages)
        self.cids.update(later.cids)
        for cid, upto in later.consumed.items():
            self.consumed[cid] = max(upto, self.consumed.get(cid, 0))
        self.gaps.update(later.gaps)
        self.forwards += later.forwards

    @property
    def size(self) -> int:
        """Records this batch carries, whatever the store makes of them (for statistics)."""
        return (
            len(self.sessions)
            + len(self.messages)
            + sum(map(len, self.appends.values()))
            + len(self.trims)
            + len(self.deletes)
            + sum(map(len, self.rewrites.values()))
            + len(self.consumed)
            + len(self.forwards)
        )


class SessionStore(Protocol):
    """Where sessions live between hub processes."""

    name: str
    """A short description (``"memory"``, ``"sqlite:/path"``)."""

    async def open(self) -> StoredState:
        """Open (creating if needed) and load everything; raise :class:`StoreError`."""
        ...

    async def write(self, batch: StoreBatch) -> list[tuple[Forward, str]] | None:
        """Apply ``batch`` atomically; raise :class:`StoreError` and apply nothing on failure.

        A clustered store returns the forwards it refused, each with why
        (``unknown``, ``full``); others return None.
        """
        ...

    async def compact(self) -> int:
        """Drop message bodies no log references any more; return how many."""
        ...

    async def aclose(self) -> None:
        """Release resources; idempotent."""
        ...
