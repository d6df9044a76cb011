"""Test your genesis_trio application deterministically, without sockets.

:class:`MemoryHub` runs a real hub -- the same Hypercorn protocol stack,
the same ASGI app -- over in-memory Trio streams, so tests can run on
``trio.testing.MockClock`` (``autojump_clock``) and finish in milliseconds of
real time even when they cover minutes of heartbeats and backoff.
:class:`LinkFaults` injects network faults into a client's links: cut,
stall (a silent network), added latency, a truncated frame, refused
connections.

Example::

    async def test_resume(nursery, autojump_clock):
        hub = await start_memory_hub(nursery)
        faults = LinkFaults()
        async with hub.client("a", faults=faults) as a, hub.client("b") as b:
            await a.send("b", "n", 1)
            faults.cut()                      # the link drops
            await a.send("b", "n", 2)         # buffered, replayed after resume
            assert [(await b.receive()).data for _ in range(2)] == [1, 2]
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import attrs
import trio
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from ._app import create_app
from ._client import TranscendentalWebSocket
from ._config import HubConfig
from ._hub import TranscendentalExternalWebSocket
from ._hypercorn import GuardedTCPServer, serving_context
from ._serve import ServeInfo, hypercorn_config, serve_hub

__all__ = [
    "CheckReport",
    "DeliveryChecker",
    "FaultyStream",
    "LinkFaults",
    "MemoryHub",
    "start_hub",
    "start_memory_hub",
]


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

    def break_now(self) -> None:
        """Close both directions at once (the peer sees EOF / a broken pipe)."""
        self.broken = True
        send, receive = self._inner.send_stream, self._inner.receive_stream
        send.close()
        receive.close()

    def _check(self) -> None:
        if self.broken:
            raise trio.BrokenResourceError("link cut by LinkFaults")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send, subject to stall, delay, truncation and cuts."""
        faults = self._faults
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
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive, subject to stall, delay and cuts."""
        self._check()
        try:
            data = await self._inner.receive_some(max_bytes)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("link cut by LinkFaults") from None
        faults = self._faults
        await faults._wait_flowing()
        if faults.delay and data:
            await trio.sleep(faults.delay)
        self._check()
        return data

    async def send_eof(self) -> None:
        """Delegate."""
        await self._inner.send_eof()

    async def aclose(self) -> None:
        """Close both directions (while stalled, the close is lost like everything else)."""
        self.broken = True
        if self._faults.stalled:
            await trio.lowlevel.checkpoint()
            return
        await self._inner.aclose()


class _FakeSocket:
    """What Hypercorn's TCPServer reads off a socket: family and addresses."""

    family = socket.AF_INET

    def __init__(self, peer: tuple[str, int]) -> None:
        self._peer = peer

    def getpeername(self) -> tuple[str, int]:
        return self._peer

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8000)


class _ServerSide(trio.abc.HalfCloseableStream):
    """The hub's end of an in-memory link, with the ``socket`` Hypercorn expects."""

    def __init__(self, inner: trio.StapledStream[Any, Any], peer: tuple[str, int]) -> None:
        self._inner = inner
        self.socket = _FakeSocket(peer)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self._inner.receive_some(max_bytes)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("closed") from None

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class MemoryHub:
    """A real hub served over in-memory streams; start it with :func:`start_memory_hub`."""

    url = "ws://memory-hub/ws"
    """The URL to give clients (any ws:// URL works with the stream factory)."""

    def __init__(self, hub: TranscendentalExternalWebSocket, nursery: trio.Nursery) -> None:
        self.hub = hub
        self._nursery = nursery
        self._config = hypercorn_config("127.0.0.1", 0, hub.config)
        self._app = wrap_app(
            create_app(hub),  # type: ignore[arg-type]  # Starlette is an ASGI app
            self._config.wsgi_max_body_size,
            None,
        )
        self._context = WorkerContext(None)
        self._next_port = 40000

    async def open_stream(self, faults: LinkFaults | None = None) -> trio.abc.Stream:
        """A new link to the hub: the hub side is served in the hub's nursery."""
        if faults is not None and faults.refuse > 0:
            faults.refuse -= 1
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError("connection refused by LinkFaults")
        client, server = trio.testing.memory_stream_pair()
        self._next_port += 1
        server_side = _ServerSide(server, ("127.0.0.1", self._next_port))
        tcp = GuardedTCPServer(
            self._app,
            self._config,
            self._context,
            ConnectionState({}),
            server_side,
        )
        with serving_context(self.hub.config.max_message_size, self.hub.serving_observer):
            self._nursery.start_soon(tcp.run)
        await trio.lowlevel.checkpoint()
        if faults is None:
            return client
        stream = FaultyStream(client, faults)
        faults._current = stream
        faults.connections += 1
        return stream

    def stream_factory(self, faults: LinkFaults | None = None) -> Any:
        """A ``stream_factory`` for :class:`TranscendentalWebSocket`."""

        async def factory(host: str, port: int) -> trio.abc.Stream:
            return await self.open_stream(faults)

        return factory

    def client(
        self, component_id: str | None = None, *, faults: LinkFaults | None = None, **options: Any
    ) -> TranscendentalWebSocket:
        """A client wired to this hub (options as for :class:`TranscendentalWebSocket`)."""
        return TranscendentalWebSocket(
            self.url, component_id, stream_factory=self.stream_factory(faults), **options
        )


async def start_memory_hub(
    nursery: trio.Nursery, config: HubConfig | None = None, **options: Any
) -> MemoryHub:
    """Start a hub (and its housekeeping) over in-memory streams in ``nursery``."""
    hub = TranscendentalExternalWebSocket(config, **options)
    await nursery.start(hub.run)
    return MemoryHub(hub, nursery)


async def start_hub(
    nursery: trio.Nursery,
    config: HubConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **options: Any,
) -> tuple[TranscendentalExternalWebSocket, ServeInfo]:
    """Start a hub on a real socket (port 0: a free one); returns the hub and its address."""
    hub = TranscendentalExternalWebSocket(config, **options)
    info: ServeInfo = await nursery.start(functools.partial(serve_hub, hub, host=host, port=port))
    return hub, info


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
