"""Messages a cluster node hands to other nodes (mixed into :class:`~.cluster.ClusterNode`).

What this node does not deliver itself becomes a
:class:`~genesis_trio.stores.Forward` in the journal: the same commit that
stores the sender's progress puts it in the target node's inbox (or a
component's own). Refusals come back after the commit; replies to another
node's own requests are forwarded to that node.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from .._core.codec import MSGPACK, EncodedBody
from .._core.errors import ErrorCode
from .._core.frames import Body, Error
from ..stores._cluster import ClusterStore
from ..stores._protocol import Forward
from .inboxes import Drain
from .journal import Journal
from .requests import NODE_REQUEST, node_of_request
from .sessions import SessionTable

Reporter = Callable[[Error], None]


class Forwarding:
    """Forwards to other nodes, their refusals, and replies to other nodes' requests."""

    store: ClusterStore
    journal: Journal
    table: SessionTable
    drain: Drain
    forwarded: int

    def forward(
        self,
        body: dict[str, object],
        *,
        to: str | None = None,
        topic: str | None = None,
        report: Reporter | None = None,
        n: int | None = None,
    ) -> None:
        """Record ``body`` for components reached through inboxes (next commit).

        ``to``: a component on another node, or this node's taking its
        messages through its own inbox. ``topic``: the subscribers on other
        nodes, and this node's taking theirs through their own inboxes.
        """
        tag = None
        if report is not None:
            tag = (weakref.WeakMethod(report) if hasattr(report, "__self__") else report, n,
                   body.get("id"))  # fmt: skip
        packed = EncodedBody(body).encoded(MSGPACK)
        journal, drain = self.journal, self.drain
        journal.forwarded(Forward(to, topic, packed, tag=tag))
        self.forwarded += 1
        table = self.table
        if to is not None:
            if to in table.by_id:  # local, but taking its messages through its inbox
                drain.noted(to)
        elif topic is not None:
            for session in table.subscribers.get(topic, ()):
                if session.via_inbox:
                    drain.spill(session, topic, packed)

    def replies(self, resolve: Callable[[Body], None]) -> Callable[[Body], None]:
        """Where replies to ``$hub`` go: this node's requests to ``resolve``, others' there."""
        self.drain.on_reply = resolve  # those other nodes send here
        node = self.store.node

        def route(body: Body) -> None:
            owner = node_of_request(body.get("re"))
            if owner is None or owner == node:
                resolve(body)
                return
            packed = EncodedBody(body).encoded(MSGPACK)
            self.journal.forwarded(Forward(NODE_REQUEST + owner, None, packed))
            self.forwarded += 1

        return route

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
