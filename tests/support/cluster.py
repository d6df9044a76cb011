"""Several ``genesis-trio serve --cluster`` nodes on one Redis, and a switchboard for clients.

The :class:`Switchboard` is a client ``stream_factory`` over real TCP that
can black-hole a node: its open streams go silent (no error, like a
partition) and new connections to it are refused, so a client moves to the
next address while the node still believes the old link is alive.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from genesis_trio import TranscendentalWebSocket
from genesis_trio.testing import DeliveryChecker

from .processes import HubProcess, free_port, start_cli_hub
from .workload import exchange


@contextlib.asynccontextmanager
async def start_node(
    redis_url: str, node: str, *more: str, port: int = 0, lease: float = 2.0
) -> AsyncIterator[HubProcess]:
    """One cluster node (a CLI hub) named ``node``."""
    args = ("--store", redis_url, "--cluster", "--node-id", node, "--node-lease", str(lease))
    async with start_cli_hub(*args, *more, port=port or free_port()) as hub:
        yield hub


async def ring_through_a_kill(
    clients: Sequence[TranscendentalWebSocket], victim: HubProcess, after: int, messages: int
) -> None:
    """Each client sends ``messages`` numbered messages to the next; ``victim`` is
    SIGKILLed after ``after`` deliveries (fewer than ``messages``: none of its clients
    can have had all of theirs). Asserts every one arrived exactly once, in order."""
    assert after < messages
    checker = DeliveryChecker()
    delivered = 0
    killed = trio.Event()

    def count() -> None:
        nonlocal delivered
        delivered += 1
        if delivered == after and not killed.is_set():
            victim.process.send_signal(signal.SIGKILL)
            killed.set()

    with trio.fail_after(60):
        await exchange(
            clients, lambda i: (i + 1) % len(clients), messages, checker, delivered=count
        )
    report = checker.report()
    assert killed.is_set()
    assert report.sent == report.delivered == messages * len(clients)
    assert (report.lost, report.duplicated, report.reordered, report.unexpected) == (0,) * 4


def port_of(url: str) -> int:
    """The port of a ``ws://host:port/ws`` address."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


class _Silenceable(trio.abc.Stream):
    """A TCP stream that its switchboard can make silent (both ways, no error)."""

    def __init__(self, inner: trio.SocketStream, board: Switchboard, port: int) -> None:
        self._inner = inner
        self._board = board
        self._port = port

    async def _flowing(self) -> None:
        while self._port in self._board.silent:
            await self._board.changed.wait()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._flowing()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        await self._flowing()
        return data

    async def aclose(self) -> None:
        if self._port in self._board.silent:  # the close is lost too; the socket goes away
            self._inner.socket.close()
            await trio.lowlevel.checkpoint()
            return
        await self._inner.aclose()


class Switchboard:
    """A client ``stream_factory`` that can silence and refuse nodes by port."""

    def __init__(self) -> None:
        self.silent: set[int] = set()
        self.changed = trio.Event()
        self.opened: list[int] = []
        """The port of every connection made, in order."""

    def silence(self, port: int) -> None:
        """Existing links to ``port`` go quiet; new ones are refused."""
        self.silent.add(port)

    def restore(self, port: int) -> None:
        """Let ``port`` work again."""
        self.silent.discard(port)
        self.changed.set()
        self.changed = trio.Event()

    async def __call__(self, host: str, port: int) -> Any:
        if port in self.silent:
            raise ConnectionRefusedError(f"switchboard: {port} is cut off")
        stream = await trio.open_tcp_stream(host, port)
        self.opened.append(port)
        return _Silenceable(stream, self, port)


class TcpProxy:
    """A loopback TCP proxy to ``target`` that can be cut (a partition) and healed.

    Cut: every connection through it is closed and new ones are closed at
    once, so the side behind it sees its peer vanish until :meth:`heal`.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cut_off = False
        self._scopes: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Partition: drop every connection, refuse new ones."""
        self.cut_off = True
        for scope in self._scopes:
            scope.cancel()

    def heal(self) -> None:
        """End the partition."""
        self.cut_off = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, client: trio.SocketStream) -> None:
        async with client:
            if self.cut_off:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
