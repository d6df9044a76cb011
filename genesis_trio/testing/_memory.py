"""``MemoryHub``: a real hub -- the same Hypercorn stack and ASGI app -- over memory streams."""

from __future__ import annotations

import functools
import socket
from typing import Any

import attrs
import trio
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from .._client.client import TranscendentalWebSocket
from .._core.config import HubConfig
from .._hub.hub import TranscendentalExternalWebSocket
from .._hub.hypercorn import GuardedTCPServer, serving_context
from .._system.app import create_app
from .._system.serve import ServeInfo, hypercorn_config, serve_hub
from ..stores import SessionStore
from ._faults import FaultyStream, LinkFaults


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

    async def open_stream(
        self, faults: LinkFaults | None = None, *, lockstep: bool = False
    ) -> trio.abc.Stream:
        """A new link to the hub: the hub side is served in the hub's nursery.

        ``lockstep``: no buffering at all -- a send waits until the other side
        reads, as a socket whose buffers are full (a client that stops
        reading then blocks the hub's sends to it).
        """
        if faults is not None and faults.refuse > 0:
            faults.refuse -= 1
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError("connection refused by LinkFaults")
        pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        client, server = pair()
        self._next_port += 1
        server_side = _ServerSide(server, ("127.0.0.1", self._next_port))
        tcp = GuardedTCPServer(
            self._app,
            self._config,
            self._context,
            ConnectionState({}),
            server_side,
        )
        with serving_context(
            self.hub.config.max_message_size,
            self.hub.serving_observer,
            deflate=self.hub.config.compression == "deflate",
        ):
            self._nursery.start_soon(tcp.run)
        await trio.lowlevel.checkpoint()
        if faults is None:
            return client
        stream = FaultyStream(client, faults)
        faults._current = stream
        faults.connections += 1
        return stream

    def stream_factory(self, faults: LinkFaults | None = None, *, lockstep: bool = False) -> Any:
        """A ``stream_factory`` for :class:`TranscendentalWebSocket`."""

        async def factory(host: str, port: int) -> trio.abc.Stream:
            return await self.open_stream(faults, lockstep=lockstep)

        return factory

    def client(
        self,
        component_id: str | None = None,
        *,
        faults: LinkFaults | None = None,
        lockstep: bool = False,
        **options: Any,
    ) -> TranscendentalWebSocket:
        """A client wired to this hub (options as for :class:`TranscendentalWebSocket`)."""
        factory = self.stream_factory(faults, lockstep=lockstep)
        return TranscendentalWebSocket(self.url, component_id, stream_factory=factory, **options)


async def start_memory_hub(
    nursery: trio.Nursery,
    config: HubConfig | None = None,
    *,
    store: SessionStore | None = None,
    **options: Any,
) -> MemoryHub:
    """Start a hub (and its housekeeping) over in-memory streams in ``nursery``."""
    hub = TranscendentalExternalWebSocket(config, store=store, **options)
    await nursery.start(hub.run)
    return MemoryHub(hub, nursery)


@attrs.frozen
class RunningHub:
    """A hub served on a real socket by :func:`start_hub`."""

    hub: TranscendentalExternalWebSocket
    """The hub."""
    info: ServeInfo
    """Where it listens."""

    @property
    def url(self) -> str:
        """Its WebSocket URL (``ws://127.0.0.1:PORT/ws``)."""
        return self.info.ws_url

    @property
    def port(self) -> int:
        """Its TCP port."""
        return self.info.port

    def client(self, component_id: str | None = None, **options: Any) -> TranscendentalWebSocket:
        """A client of this hub (options as for :class:`TranscendentalWebSocket`)."""
        return TranscendentalWebSocket(self.url, component_id, **options)


async def start_hub(
    nursery: trio.Nursery,
    config: HubConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    store: SessionStore | None = None,
    **options: Any,
) -> RunningHub:
    """Start a hub on a real socket (port 0: a free one) in ``nursery``."""
    hub = TranscendentalExternalWebSocket(config, store=store, **options)
    info: ServeInfo = await nursery.start(functools.partial(serve_hub, hub, host=host, port=port))
    return RunningHub(hub, info)
