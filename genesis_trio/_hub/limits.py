"""Admission control: how many WebSocket links the hub holds, in all and per address.

A link counts from its upgrade request (handshakes included) until its
connection ends. Past ``max_connections`` an upgrade is refused with HTTP
503, past ``max_connections_per_address`` with HTTP 429 (docs/protocol.md
§1). Synchronous and O(1) per link.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Refusal:
    """Why an upgrade is refused: the HTTP status and a one-line reason."""

    status: int
    reason: str


@attrs.define(eq=False)
class Admission:
    """Counts live links in all and per client address."""

    max_total: int
    max_per_address: int
    total: int = 0
    by_address: dict[str, int] = attrs.field(factory=dict)

    def admit(self, address: str | None) -> Refusal | None:
        """Count a new link from ``address``, or say why it is refused (then nothing is counted)."""
        if self.total >= self.max_total:
            return Refusal(503, f"the hub is at its connection limit ({self.max_total})")
        key = address or ""
        held = self.by_address.get(key, 0)
        if held >= self.max_per_address:
            return Refusal(
                429, f"too many connections from this address (limit {self.max_per_address})"
            )
        self.total += 1
        self.by_address[key] = held + 1
        return None

    def release(self, address: str | None) -> None:
        """A link admitted from ``address`` has ended."""
        key = address or ""
        self.total -= 1
        held = self.by_address[key] - 1
        if held:
            self.by_address[key] = held
        else:
            del self.by_address[key]
