"""``$stats``: the hub's statistics, published every second while someone listens.

Live dashboards subscribe to the system topic ``$stats`` instead of polling
the HTTP API. Each tick is a message ``{type: "stats", topic: "$stats",
from: "$hub", data: get_stats()}`` (``close_codes`` keyed by strings, as in
JSON) appended to every connected subscriber that has room
(a tick never waits: a subscriber whose buffer is full misses it, the next
one tells the same story). With no subscriber nothing is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from .._core.codec import EncodedBody
from .._core.frames import HUB_ID, STATS_TOPIC
from .sessions import HubSession, SessionTable

INTERVAL: Final = 1.0
"""Seconds between ticks."""


class StatsTicker:
    """Publishes statistics on ``$stats`` (see the module docstring)."""

    def __init__(
        self,
        table: SessionTable,
        stats: Callable[[], dict[str, Any]],
        append: Callable[[Sequence[HubSession], EncodedBody], None],
        interval: float = INTERVAL,
    ) -> None:
        self.table = table
        self.stats = stats
        self.append = append
        self.interval = interval
        self.ticks = 0
        """Ticks published."""

    def tick(self) -> int:
        """Publish one tick now; return how many subscribers got it."""
        subscribers = self.table.subscribers.get(STATS_TOPIC)
        if not subscribers:
            return 0
        targets = tuple(s for s in subscribers if s.connected and s.outbound.has_room)
        if targets:
            stats = self.stats()
            stats["close_codes"] = {str(k): v for k, v in stats["close_codes"].items()}  # JSON
            body = {"type": "stats", "topic": STATS_TOPIC, "from": HUB_ID, "data": stats}
            self.append(targets, EncodedBody(body))
            self.ticks += 1
        return len(targets)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.tick()
