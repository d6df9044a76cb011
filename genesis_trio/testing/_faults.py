"""Fault injection for a client's links: cut, stall, latency, torn frames, refusals."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import trio


@attrs.define(eq=False)
class LinkFaults:
    """Fault controls for one client: they act on its current link and later ones.

    * :meth:`cut` -- the link breaks now (both directions; the hub sees EOF);
    * :meth:`stall` / :meth:`unstall` -- nothing moves either way, no error
      (a black-holed network: only heartbeats can tell);
    * ``delay`` -- seconds added before each chunk is delivered, each way;
    * :meth:`truncate_next` -- the next chunk the client sends is cut in half,
      then the link breaks (a frame torn mid-way);
    * ``refuse`` -- that many upcoming connection attempts fail with
      ``ConnectionRefusedError``.
    """

    delay: float = 0.0
    refuse: int = 0
    cuts: int = 0
    truncations: int = 0
    connections: int = 0
    _stalled: bool = False
    _unstalled: trio.Event = attrs.field(factory=trio.Event)
    _truncate: bool = False
    _current: FaultyStream | None = None

    @property
    def stalled(self) -> bool:
        """True while stalled."""
        return self._stalled

    def cut(self) -> bool:
        """Break the current link; False if there is none (or it is already broken)."""
        current = self._current
        if current is None or current.broken:
            return False
        current.break_now()
        self.cuts += 1
        return True

    def stall(self) -> None:
        """Stop all traffic without an error until :meth:`unstall`."""
        if not self._stalled:
            self._stalled = True
            self._unstalled = trio.Event()

    def unstall(self) -> None:
        """Let traffic flow again."""
        self._stalled = False
        self._unstalled.set()

    def truncate_next(self) -> None:
        """Tear the next chunk the client sends, then break the link."""
        self._truncate = True

    async def _wait_flowing(self) -> None:
        while self._stalled:
            await self._unstalled.wait()


class FaultyStream(trio.abc.HalfCloseableStream):
    """A stream wrapper that obeys a :class:`LinkFaults` (used on the client side)."""

    def __init__(self, inner: trio.StapledStream[Any, Any], faults: LinkFaults) -> None:
        self._inner = inner
        self._faults = faults
        self.broken = False
        """True once cut (by a fault, or closed): the link is gone."""
        self._closed = False
        self._send_busy = False

    def break_now(self) -> None:
        """Close both directions at once (the peer sees EOF / a broken pipe)."""
        self.broken = True
        send, receive = self._inner.send_stream, self._inner.receive_stream
        send.close()
        receive.close()

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self.broken:
            raise trio.BrokenResourceError("link cut by LinkFaults")

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """One sender at a time (send_all, send_eof, wait_send_all_might_not_block)."""
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._send_busy = True
        try:
            yield
        finally:
            self._send_busy = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send, subject to stall, delay, truncation and cuts."""
        faults = self._faults
        with self._sending():
            self._check()
            await faults._wait_flowing()
            if faults.delay:
                await trio.sleep(faults.delay)
            self._check()
            if faults._truncate and len(data) > 1:
                faults._truncate = False
                faults.truncations += 1
                await self._inner.send_all(bytes(data[: len(data) // 2]))
                faults.cuts += 1
                self.break_now()
                raise trio.BrokenResourceError("link cut mid-frame by LinkFaults")
            await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """Delegate."""
        with self._sending():
            self._check()
            await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive, subject to stall, delay and cuts."""
        self._check()
        try:
            data = await self._inner.receive_some(max_bytes)
        except trio.ClosedResourceError:
            if self._closed:  # closed here, by another task: that is what it says
                raise
            raise trio.BrokenResourceError("link cut by LinkFaults") from None
        faults = self._faults
        await faults._wait_flowing()
        if faults.delay and data:
            await trio.sleep(faults.delay)
        self._check()
        return data

    async def send_eof(self) -> None:
        """Delegate."""
        with self._sending():
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            await self._inner.send_eof()

    async def aclose(self) -> None:
        """Close both directions (while stalled, the close is lost like everything else)."""
        self.broken = True
        self._closed = True
        if self._faults.stalled:
            await trio.lowlevel.checkpoint()
            return
        await self._inner.aclose()
