"""The independent trio-websocket client (examples/) against a real hub."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import random
import socket
import struct
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import trio

from genesis_trio import TranscendentalWebSocket
from genesis_trio.testing import RunningHub

PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "trio_websocket_client.py"
COUNT = 300


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_trio_websocket_client", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tw = _load()


class Progress:
    """A counter that tasks can wait on (no sleeping)."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = trio.Event()

    def bump(self) -> None:
        self.value += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


class CuttingProxy:
    """A TCP relay on 127.0.0.1 whose links can be cut (FIN or RST) on demand."""

    def __init__(self, target_port: int, rng: random.Random) -> None:
        self.target_port, self.rng = target_port, rng
        self.links: dict[trio.CancelScope, tuple[trio.SocketStream, trio.SocketStream]] = {}
        self.cuts = 0
        self.opened = Progress()

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1"))
        port: int = listeners[0].socket.getsockname()[1]
        return port

    def cut(self) -> None:
        for scope, streams in list(self.links.items()):
            if self.rng.random() < 0.5:  # abortive close: RST instead of FIN
                for stream in streams:
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            scope.cancel()
            self.cuts += 1

    async def _relay(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        with trio.CancelScope() as scope:
            self.links[scope] = (client, upstream)
            self.opened.bump()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
        del self.links[scope]
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(upstream)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def exchange(client: Any, peer: str, got: list[int], progress: Progress | None = None) -> None:
    """Send COUNT numbered messages to peer while receiving COUNT from it."""

    async def sender() -> None:
        for n in range(COUNT):
            await client.send(peer, "n", n)
        await client.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for _ in range(COUNT):
            body = await client.receive()
            assert body["from"] == peer and body["type"] == "n"
            got.append(body["data"])
            if progress is not None:
                progress.bump()


async def test_two_clients_exchange_exactly_once(hub: RunningHub) -> None:
    got_a: list[int] = []
    got_b: list[int] = []
    async with tw.GenesisClient(hub.url, "tw-a") as a, tw.GenesisClient(hub.url, "tw-b") as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange, a, "tw-b", got_a)
            nursery.start_soon(exchange, b, "tw-a", got_b)
    assert got_a == list(range(COUNT))
    assert got_b == list(range(COUNT))
    assert a.stats.reconnects == b.stats.reconnects == 0
    assert a.stats.errors == b.stats.errors == 0


@pytest.mark.deadline(45)
async def test_exactly_once_through_a_cutting_proxy(hub: RunningHub, nursery: trio.Nursery) -> None:
    rng = random.Random(1234)
    proxy = CuttingProxy(hub.port, rng)
    url = f"ws://127.0.0.1:{await proxy.start(nursery)}/ws"
    progress = Progress()
    cut_points = sorted(rng.sample(range(5, 2 * COUNT - 5), 15))
    cuts_done = trio.Event()

    async def cutter() -> None:
        for point in cut_points:
            await progress.wait_until(lambda: progress.value >= point)
            await proxy.opened.wait_until(lambda: bool(proxy.links))
            proxy.cut()
        cuts_done.set()

    got_a: list[int] = []
    got_b: list[int] = []
    options = {"backoff_base": 0.02, "backoff_cap": 0.2}
    async with (
        tw.GenesisClient(url, "cut-a", rng=random.Random(1), **options) as a,
        tw.GenesisClient(url, "cut-b", rng=random.Random(2), **options) as b,
    ):
        nursery.start_soon(cutter)
        async with trio.open_nursery() as inner:
            inner.start_soon(exchange, a, "cut-b", got_a, progress)
            inner.start_soon(exchange, b, "cut-a", got_b, progress)
        await cuts_done.wait()
    print("DBG", proxy.cuts, a.stats, b.stats)
    assert got_a == list(range(COUNT)), "cut-a: lost, duplicated or reordered"
    assert got_b == list(range(COUNT)), "cut-b: lost, duplicated or reordered"
    assert proxy.cuts >= 15
    for client in (a, b):
        assert client.stats.reconnects >= 1
        assert client.stats.resumes == client.stats.reconnects  # every reconnect recovered
        assert client.stats.new_epochs == 0
        assert client.stats.errors == 0


async def test_interoperates_with_the_python_client(hub: RunningHub) -> None:
    got_ours: list[int] = []
    got_theirs: list[int] = []
    async with tw.GenesisClient(hub.url, "ours") as ours, TranscendentalWebSocket(hub.url, "py") as py:

        async def python_side() -> None:
            async def sender() -> None:
                for n in range(COUNT):
                    await py.send("ours", "n", n)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                for _ in range(COUNT):
                    got_theirs.append((await py.receive()).data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(python_side)
            nursery.start_soon(exchange, ours, "py", got_ours)
    assert got_ours == list(range(COUNT))
    assert got_theirs == list(range(COUNT))


async def test_main_runs(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    await tw.main(hub.url)
    out = capsys.readouterr().out
    assert out.count("got 'greeting' from 'trio-ws-example'") == 3
