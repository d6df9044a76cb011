"""An auto-reset wake-up signal for one waiting task (the writer of a link)."""

from __future__ import annotations

import math

import trio


class Signal:
    """``set()`` wakes the waiter; a ``set()`` before ``wait()`` is not lost.

    Cheaper than a fresh :class:`trio.Event` per wait: one parking lot,
    one flag, no allocation per wake-up.
    """

    __slots__ = ("_flag", "_lot")

    def __init__(self) -> None:
        self._flag = False
        self._lot = trio.lowlevel.ParkingLot()

    def set(self) -> None:
        """Wake the waiter (or make its next ``wait()`` return at once)."""
        self._flag = True
        if self._lot:
            self._lot.unpark_all()

    @property
    def is_set(self) -> bool:
        """True when a wake-up is pending (``set()`` since the last ``clear()``)."""
        return self._flag

    def clear(self) -> None:
        """Forget a pending wake-up."""
        self._flag = False

    async def wait(self, deadline: float = math.inf) -> None:
        """Wait until ``set()`` or until the Trio clock reaches ``deadline``."""
        if self._flag:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_at(deadline):
            await self._lot.park()
