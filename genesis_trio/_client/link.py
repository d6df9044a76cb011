"""One link of the client: its state and its three tasks.

* the reader: decodes frames, drops duplicates, hands new messages to the
  dispatcher (never waiting for the application), applies acks, answers pings;
* the writer: a thin shell over the core's :class:`LinkProtocol` (what to
  send, batched within the window; when to acknowledge), plus control frames;
* the heartbeat: pings when the hub has been silent, and fails the link when
  it stays silent -- a task of its own, so that a send blocked on a dead
  network cannot hide the silence.

A link knows the rest of the client only through :class:`LinkHost` (the
:class:`~.keeper.LinkKeeper` that opened it).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import attrs
import trio

from .._core.codec import Codec
from .._core.config import ClientConfig
from .._core.errors import CloseCode, ConnectionClosed, RemoteProtocolError
from .._core.frames import Ack, Body, Error, MessageFrame, Ping, Pong, parse_frame
from .._core.heartbeat import Heartbeat
from .._core.link import Deliver, Hold, Idle, LinkProtocol, SendAck
from .._core.session import ClientSession
from .._runtime.dispatch import Dispatcher
from .._runtime.signal import Signal
from .transport import ClientTransport
from .types import ClientCounters

log = logging.getLogger("genesis_trio.client")


class LinkHost(Protocol):
    """What a link needs of the client around it."""

    config: ClientConfig
    codec: Codec
    session: ClientSession[bytes]
    dispatcher: Dispatcher
    counters: ClientCounters
    control: deque[bytes]
    """Control frames (pongs, sub/unsub) for the writer."""
    writer_wake: Signal

    def wire(self, data: bytes) -> str | bytes:
        """An encoded frame as the WebSocket message the codec uses."""
        ...

    def acknowledged(self, seq: int) -> None:
        """The hub acknowledged our messages up to ``seq``."""
        ...

    def queue_control(self, frame: bytes) -> bool:
        """Queue a control frame (dropped when the queue is full)."""
        ...

    def control_sent(self) -> None:
        """The writer sent a control frame (room for more)."""
        ...

    def subscription_confirmed(self, ping_id: int) -> bool:
        """A pong: True if it confirms a subscription change (not a heartbeat)."""
        ...

    def error_frame(self, frame: Error) -> None:
        """An error frame from the hub."""
        ...


@attrs.define(eq=False)
class ClientLink:
    """One WebSocket link of a client: its transport, heartbeat and protocol."""

    conn: ClientTransport
    heartbeat: Heartbeat
    protocol: LinkProtocol[bytes]
    max_size: int
    """The largest frame the hub accepts (``welcome.max_size``): no message may exceed it."""
    initial: list[str | bytes] = attrs.field(factory=list)
    """Frames that arrived together with the welcome (read first)."""
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    code: int | None = None
    """The close code, once the link has failed."""
    reason: str = ""

    @property
    def window(self) -> int:
        """The hub's flow-control window (``welcome.window``)."""
        return self.protocol.window

    def fail(self, code: int, reason: str) -> None:
        """End the link (the first reason given wins)."""
        if self.code is None:
            self.code, self.reason = code, reason
        self.scope.cancel()

    async def run(self, host: LinkHost) -> None:
        """Run the link's tasks (reader, writer, heartbeat) until it fails; then close it."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._task, self._writer, host)
                    nursery.start_soon(self._task, self._heartbeat, host)
                    await self._reader(host)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(host.config.close_timeout, shield=True):
                code = self.code
                if code is None or code == CloseCode.ABNORMAL_CLOSURE:
                    code = CloseCode.NORMAL
                await self.conn.aclose(code, self.reason[:120])

    async def _task(self, body: Callable[[LinkHost], Awaitable[None]], host: LinkHost) -> None:
        """Run one of the link's tasks; a closed connection fails the whole link."""
        try:
            await body(host)
        except ConnectionClosed as exc:
            self.fail(exc.code, exc.reason)

    # -- the link's tasks -----------------------------------------------------------------

    async def _reader(self, host: LinkHost) -> None:
        conn = self.conn
        decode = host.codec.decode
        try:
            messages, self.initial = self.initial, []
            while True:
                if not messages:
                    messages = await conn.receive_some()
                self.heartbeat.received(trio.current_time())
                for data in messages:
                    self._handle_frame(host, parse_frame(decode(data), sender="hub"))
                messages = []
        except ConnectionClosed as exc:
            self.fail(exc.code, exc.reason)
        except RemoteProtocolError as exc:
            log.warning("hub broke the protocol: %s", exc)
            self.fail(exc.close_code or CloseCode.PROTOCOL_ERROR, str(exc)[:120])

    def _handle_frame(self, host: LinkHost, frame: Any) -> None:
        kind = type(frame)
        if kind is MessageFrame:
            if frame.ack is not None:
                host.acknowledged(frame.ack)
            seq = frame.seq
            bodies = frame.bodies
            skip = host.session.inbound.accept(seq, len(bodies))
            counters = host.counters
            if skip:
                counters.duplicates_dropped += skip
            # Bodies from the hub are never Rejected: parse_frame raises instead.
            fresh = cast("list[Body]", bodies[skip:] if skip else bodies)
            host.dispatcher.deliver_all(seq + skip, fresh)
            counters.messages_received += len(fresh)
        elif kind is Ack:
            host.acknowledged(frame.seq)
        elif kind is Ping:
            host.queue_control(host.codec.encode(Pong(frame.id).wire()))
        elif kind is Pong:
            if not host.subscription_confirmed(frame.id):
                self.heartbeat.pong(frame.id, trio.current_time())
        elif kind is Error:
            host.error_frame(frame)
        else:
            raise RemoteProtocolError(f"unexpected frame from the hub: {frame!r}")

    async def _writer(self, host: LinkHost) -> None:
        """Write what the link protocol says; control frames first."""
        protocol = self.protocol
        codec = host.codec
        wire = host.wire
        send = self.conn.send
        control = host.control
        wake = host.writer_wake
        c = host.counters
        while True:
            wake.clear()
            while control:
                await send(wire(control.popleft()))
                host.control_sent()
            step = protocol.poll(trio.current_time())
            if type(step) is Deliver:
                await send(wire(codec.frame(step.kind, step.seq, step.bodies, step.ack)))
                c.frames_sent += 1
                c.messages_framed += len(step.bodies)
            elif type(step) is SendAck:
                await send(wire(codec.encode(Ack(step.seq).wire())))
            elif type(step) is Idle:
                await wake.wait(step.until)
            elif type(step) is Hold:  # pragma: no cover - the client has no fan-out window
                await trio.sleep_until(step.until)
            else:  # Yield: a batch is forming
                await trio.lowlevel.checkpoint()

    async def _heartbeat(self, host: LinkHost) -> None:
        """Ping on schedule; fail the link when the hub falls silent.

        A task of its own so that a send blocked on a dead network cannot
        hide the silence: every ping is bounded by the dead-peer deadline.
        """
        heartbeat = self.heartbeat
        conn = self.conn
        encode = host.codec.encode
        while True:
            now = trio.current_time()
            if heartbeat.dead(now):
                self.fail(CloseCode.HEARTBEAT_TIMEOUT, "no frame from the hub in time")
                return
            ping = heartbeat.ping_due(now)
            if ping is not None:
                with trio.move_on_at(heartbeat.deadline()):
                    await conn.send(host.wire(encode(ping.wire())))
                continue
            await trio.sleep_until(heartbeat.next_wakeup())
