"""Requests the hub itself sends (``hub.request``), waiting for their replies.

A reply is a message to ``$hub`` whose ``re`` names a request id this
registry issued; the router hands it here before any hub handler sees it.
A reply that arrives after its request gave up is dropped (and counted).
"""

from __future__ import annotations

import itertools
import secrets
from typing import Final

from .._core.frames import Body
from .._runtime.dispatch import Pending

MAX_PENDING: Final = 10_000
"""Hub requests waiting at once; more raise at once."""
NODE_REQUEST: Final = "$hub@"
"""How the ids of a cluster node's requests begin: ``$hub@NODE/...``."""


def node_of_request(rid: object) -> str | None:
    """The node whose request ``rid`` is (a cluster), else None."""
    if isinstance(rid, str) and rid.startswith(NODE_REQUEST) and "/" in rid:
        return rid[len(NODE_REQUEST) :].split("/", 1)[0]
    return None


class HubRequests:
    """Pending hub requests by id."""

    def __init__(self, limit: int = MAX_PENDING, node: str | None = None) -> None:
        self.limit = limit
        self.pending: dict[str, Pending] = {}
        self._prefix = f"$hub.{secrets.token_hex(4)}."
        if node is not None:  # a cluster's node: its ids say where replies go
            self._prefix = f"{NODE_REQUEST}{node}/{secrets.token_hex(4)}."
        self._ids = itertools.count(1)
        self.late_replies = 0
        """Replies that came after their request gave up (or named no request)."""

    def open(self) -> tuple[str, Pending]:
        """A new request id and its waiter; RuntimeError past :data:`MAX_PENDING`."""
        if len(self.pending) >= self.limit:
            raise RuntimeError(f"{self.limit} hub requests are waiting already")
        rid = f"{self._prefix}{next(self._ids)}"
        pending = self.pending[rid] = Pending()
        return rid, pending

    def close(self, rid: str) -> None:
        """The request is over (answered or given up)."""
        self.pending.pop(rid, None)

    def resolve(self, body: Body) -> None:
        """A reply to ``$hub``: wake its request (a late one is counted and dropped)."""
        waiter = self.pending.get(body.get("re", ""))
        if waiter is None:
            self.late_replies += 1
            return
        waiter.settle(body)
