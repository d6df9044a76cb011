"""``MemoryStore``: a session store in this process's memory (for tests and embedding)."""

from __future__ import annotations

import attrs

from ._protocol import SessionRow, StoreBatch, StoredEntry, StoredSession, StoredState, StoreError


@attrs.define(eq=False)
class MemoryStore:
    """A store in this process's memory: survives a hub object, not the process.

    Tests use it to restart a hub on the mock clock; ``fail_writes`` makes the
    next writes fail (as a full disk would).
    """

    name: str = "memory"
    rows: dict[str, SessionRow] = attrs.field(factory=dict)
    logs: dict[str, dict[int, StoredEntry]] = attrs.field(factory=dict)
    bodies: dict[int, bytes] = attrs.field(factory=dict)
    fail_writes: int = 0

    async def open(self) -> StoredState:
        """The current content (message bodies: those a log references)."""
        used = {e.msg_id for log in self.logs.values() for e in log.values() if e.msg_id}
        return StoredState(
            tuple(
                StoredSession(row, tuple(sorted(self.logs.get(sid, {}).values(), key=_seq)))
                for sid, row in self.rows.items()
            ),
            {k: v for k, v in self.bodies.items() if k in used},
        )

    async def write(self, batch: StoreBatch) -> None:
        """Apply the batch (or fail, if asked to)."""
        if self.fail_writes:
            self.fail_writes -= 1
            raise StoreError("simulated store failure (database or disk is full)")
        self.bodies.update(batch.messages)
        for sid in batch.deletes:
            self.rows.pop(sid, None)
            self.logs.pop(sid, None)
        for sid, entries in batch.rewrites.items():
            self.logs[sid] = {e.seq: e for e in entries}
        for sid, entries in batch.appends.items():
            log = self.logs.setdefault(sid, {})
            for entry in entries:
                log[entry.seq] = entry
        for sid, seq in batch.trims.items():
            kept = self.logs.get(sid)
            if kept:
                for key in [k for k in kept if k <= seq]:
                    del kept[key]
        self.rows.update(batch.sessions)

    async def compact(self) -> int:
        """Drop unreferenced bodies."""
        used = {e.msg_id for log in self.logs.values() for e in log.values()}
        dead = [k for k in self.bodies if k not in used]
        for key in dead:
            del self.bodies[key]
        return len(dead)

    async def aclose(self) -> None:
        """Nothing to release."""


def _seq(entry: StoredEntry) -> int:
    return entry.seq
