"""A Jepsen-style checker for streams of numbered messages."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class CheckReport:
    """What a :class:`DeliveryChecker` found; all anomaly counts 0 means exactly-once, in order."""

    sent: int
    """Messages recorded as sent."""
    delivered: int
    """Distinct messages delivered."""
    lost: int
    """Sent but never delivered."""
    duplicated: int
    """Deliveries of a message already delivered."""
    reordered: int
    """Deliveries whose number is lower than one delivered before on the same stream."""
    unexpected: int
    """Deliveries of messages never sent."""

    @property
    def ok(self) -> bool:
        """True when nothing was lost, duplicated, reordered or unexpected."""
        return not (self.lost or self.duplicated or self.reordered or self.unexpected)


@attrs.define(eq=False)
class DeliveryChecker:
    """A Jepsen-style checker for streams of numbered messages.

    Record ``sent(stream, n)`` and ``delivered(stream, n)`` where ``stream``
    names a (sender, receiver) pair and ``n`` numbers its messages; then
    :meth:`report`.
    """

    _sent: dict[Any, set[int]] = attrs.field(factory=dict)
    _delivered: dict[Any, list[int]] = attrs.field(factory=dict)

    def sent(self, stream: Any, n: int) -> None:
        """Record that message ``n`` of ``stream`` was sent."""
        self._sent.setdefault(stream, set()).add(n)

    def delivered(self, stream: Any, n: int) -> None:
        """Record that message ``n`` of ``stream`` reached the application."""
        self._delivered.setdefault(stream, []).append(n)

    def delivered_count(self, stream: Any) -> int:
        """Deliveries recorded on ``stream`` so far."""
        return len(self._delivered.get(stream, ()))

    def report(self) -> CheckReport:
        """Compare what was sent with what was delivered, per stream."""
        sent = delivered = lost = duplicated = reordered = unexpected = 0
        for stream in set(self._sent) | set(self._delivered):
            sent_set = self._sent.get(stream, set())
            got = self._delivered.get(stream, [])
            seen: set[int] = set()
            highest = None
            for n in got:
                if n not in sent_set:
                    unexpected += 1
                elif n in seen:
                    duplicated += 1
                else:
                    if highest is not None and n < highest:
                        reordered += 1
                    seen.add(n)
                highest = n if highest is None else max(highest, n)
            sent += len(sent_set)
            delivered += len(seen)
            lost += len(sent_set - seen)
        return CheckReport(sent, delivered, lost, duplicated, reordered, unexpected)
