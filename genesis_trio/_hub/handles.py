"""What a session holds of whoever serves it: its live link, and how to wake it."""

from __future__ import annotations

from typing import Final, Protocol


class LinkHandle(Protocol):
    """What a session, and those who hold it, may ask of its live link."""

    def close_soon(self, code: int, reason: str) -> None:
        """Make the link close with ``code`` (it detaches from the session at once)."""
        ...

    def committed(self, now: float) -> None:
        """New messages became sendable, or received ones acknowledgeable: wake the writer."""
        ...


class Wake(Protocol):
    """How a session tells whoever holds it that there is something to send."""

    def set(self) -> None:
        """Something became sendable or acknowledgeable."""
        ...


class _NoOne:
    """The wake-up of a session no link holds: nobody to tell."""

    __slots__ = ()

    def set(self) -> None:
        """Nothing to wake."""


NO_ONE: Final = _NoOne()
"""A detached session's :attr:`HubSession.wake` (shared: no per-session cost)."""
