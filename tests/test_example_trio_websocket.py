"""The independent trio-websocket client (examples/trio_websocket_client.py) on a real hub."""

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
from genesis_trio.testing import RunningHub, start_hub

PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "trio_websocket_client.py"
COUNT = 300
FAST = {"backoff_base": 0.02, "backoff_cap": 0.2, "connect_timeout": 1.0}
# connect_timeout: trio-websocket notices a link cut during the upgrade only then.


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_trio_websocket_client", PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tw = _load()


class Progress:
    """A counter that tasks wait on (no sleeping)."""

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
    """A TCP relay on 127.0.0.1 whose links are cut (FIN or RST, seeded) on demand."""

    def __init__(self, target_port: int, rng: random.Random) -> None:
        self.target_port, self.rng = target_port, rng
        self.links: dict[trio.CancelScope, tuple[trio.SocketStream, trio.SocketStream]] = {}
        self.cuts = 0
        self.opened = Progress()
        self.stalled: set[trio.CancelScope] = set()  # links that forward nothing more

    async def start(self, nursery: trio.Nursery) -> str:
        serve = functools.partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/ws"

    def cut(self) -> None:
        for scope, streams in list(self.links.items()):
            if self.rng.random() < 0.5:  # abortive close: RST instead of FIN
                for stream in streams:
                    linger = struct.pack("ii", 1, 0)
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            scope.cancel()
            self.cuts += 1

    def stall(self) -> None:
        self.stalled |= set(self.links)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                self.links[nursery.cancel_scope] = (client, upstream)
                self.opened.bump()
                try:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    await self._pump(upstream, client, nursery.cancel_scope)
                finally:
                    del self.links[nursery.cancel_scope]

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if scope in self.stalled:
                    await trio.sleep_forever()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def exchange(
    client: Any, peer: str, got: list[int], progress: Progress | None = None
) -> None:
    """Send COUNT numbered messages to peer while receiving COUNT from it."""

    async def sender() -> None:
        for n in range(COUNT):
            await client.send(peer, "n", n)
        await client.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for _ in range(COUNT):
            body = await client.receive()
            assert (body["from"], body["type"]) == (peer, "n")
            got.append(body["data"])
            if progress is not None:
                progress.bump()


async def test_two_clients_exchange_exactly_once(hub: RunningHub) -> None:
    got_a: list[int] = []
    got_b: list[int] = []
    async with (
        tw.GenesisClient(hub.url, "tw-a") as a,
        tw.GenesisClient(hub.url, "tw-b") as b,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(exchange, a, "tw-b", got_a)
        nursery.start_soon(exchange, b, "tw-a", got_b)
    assert got_a == list(range(COUNT))
    assert got_b == list(range(COUNT))
    for client in (a, b):
        assert (client.stats.connects, client.stats.errors) == (1, 0)


@pytest.mark.deadline(45)
async def test_exactly_once_through_a_cutting_proxy(hub: RunningHub, nursery: trio.Nursery) -> None:
    rng = random.Random(1234)
    proxy = CuttingProxy(hub.port, rng)
    url = await proxy.start(nursery)
    progress = Progress()
    cuts_done = trio.Event()

    async def cutter() -> None:
        for point in sorted(rng.sample(range(5, 2 * COUNT - 5), 15)):
            await progress.wait_until(functools.partial(lambda p: progress.value >= p, point))
            await proxy.opened.wait_until(lambda: bool(proxy.links))
            proxy.cut()
        cuts_done.set()

    got_a: list[int] = []
    got_b: list[int] = []
    async with (
        tw.GenesisClient(url, "cut-a", rng=random.Random(1), **FAST) as a,
        tw.GenesisClient(url, "cut-b", rng=random.Random(2), **FAST) as b,
    ):
        nursery.start_soon(cutter)
        async with trio.open_nursery() as inner:
            inner.start_soon(exchange, a, "cut-b", got_a, progress)
            inner.start_soon(exchange, b, "cut-a", got_b, progress)
        await cuts_done.wait()
    assert got_a == list(range(COUNT)), "cut-a: lost, duplicated or reordered"
    assert got_b == list(range(COUNT)), "cut-b: lost, duplicated or reordered"
    assert proxy.cuts >= 15
    for client in (a, b):
        assert client.stats.reconnects >= 1
        assert client.stats.resumes == client.stats.reconnects  # every one recovered
        assert (client.stats.new_epochs, client.stats.errors) == (0, 0)


async def test_interoperates_with_the_python_client(hub: RunningHub) -> None:
    got_ours: list[int] = []
    got_theirs: list[int] = []
    async with (
        tw.GenesisClient(hub.url, "ours") as ours,
        TranscendentalWebSocket(hub.url, "py") as py,
    ):

        async def python_side() -> None:
            async def sender() -> None:
                for n in range(COUNT):
                    await py.send("ours", "n", n)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                for _ in range(COUNT):
                    message = await py.receive()
                    assert message.sender == "ours"
                    got_theirs.append(message.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(python_side)
            nursery.start_soon(exchange, ours, "py", got_ours)
    assert got_ours == list(range(COUNT))
    assert got_theirs == list(range(COUNT))


async def test_unknown_session_renumbers_from_one(
    hub: RunningHub, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The link comes back to another hub: recovered false, queued messages renumbered."""
    proxy = CuttingProxy(hub.port, random.Random(7))
    url = await proxy.start(nursery)
    other = await start_hub(nursery)
    async with tw.GenesisClient(url, "mover", **FAST) as client:
        await client.send("mover", "n", 0)
        assert (await client.receive())["data"] == 0
        proxy.target_port = other.port
        proxy.cut()
        for n in (1, 2, 3):
            await client.send("mover", "n", n)
        assert [(await client.receive())["data"] for _ in range(3)] == [1, 2, 3]
    stats = client.stats
    assert (stats.reconnects, stats.resumes, stats.new_epochs) == (1, 0, 1)
    assert "session not recovered (unknown)" in caplog.text


async def test_a_silent_hub_is_dead(
    hub_factory: Callable[..., Any], nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C9: the link stalls (no error, nothing moves); the client notices and resumes."""
    monkeypatch.setattr(tw, "SILENCE_GRACE", 0.5)
    quick = await hub_factory(heartbeat_interval=0.5)
    proxy = CuttingProxy(quick.port, random.Random(3))
    async with tw.GenesisClient(await proxy.start(nursery), "quiet", **FAST) as client:
        proxy.stall()
        await client.send("quiet", "n", 1)
        assert (await client.receive())["data"] == 1
    assert (client.stats.reconnects, client.stats.resumes) == (1, 1)


async def test_takeover_is_fatal_for_the_old_client(hub: RunningHub) -> None:
    async with (
        tw.GenesisClient(hub.url, "twin") as old,
        tw.GenesisClient(hub.url, "twin") as new,
    ):
        with pytest.raises(tw.GenesisError, match="4001"):
            await old.receive()
        await new.send("twin", "n", 1)
        assert (await new.receive())["data"] == 1
    assert old.stats.connects == 1  # C7: no reconnection after 4001


async def test_main_runs(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    await tw.main(hub.url)
    assert capsys.readouterr().out.count("got 'greeting' from 'trio-ws-example'") == 3
