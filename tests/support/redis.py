"""A real ``redis-server`` for tests: started on a free loopback port, stopped by PID.

Without ``redis-server`` the tests that need it are skipped, except under
``CI=true``, where that is a failure (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator

import pytest
import trio

from .processes import free_port


def redis_server_binary() -> str:
    """The path of ``redis-server``; skip (or fail under CI) without one."""
    path = shutil.which("redis-server")
    if path is None:
        why = "redis-server is not installed"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{why} (CI=true: the Redis tests must run)")
        pytest.skip(why)
    return path


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (AOF on, fsync always: durable)."""

    def __init__(
        self, port: int | None = None, directory: str | None = None, *, cluster: bool = False
    ) -> None:
        self.port = port or free_port()
        self.directory = directory or tempfile.mkdtemp(prefix="gt-redis-")
        self.process: trio.Process | None = None
        self.cluster = cluster
        """A Redis Cluster node (``cluster-enabled yes``)."""
        self.bus_port = free_port() if cluster else 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start it (same port and data directory as before) and wait until it answers."""
        flags = {
            "port": str(self.port), "bind": "127.0.0.1", "dir": self.directory, "save": "",
            "appendonly": "yes", "appendfsync": "always", "protected-mode": "no",
            "loglevel": "warning",
        }  # fmt: skip
        if self.cluster:  # its bus on a free port too (not port + 10000: maybe past 65535)
            flags |= {
                "cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
                "cluster-port": str(self.bus_port),
            }  # fmt: skip
        argv = [redis_server_binary()]
        for name, value in flags.items():
            argv += [f"--{name}", value]
        self.process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with trio.fail_after(10):
            while not await self._answers():
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                await trio.sleep(0.02)

    async def _answers(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            with trio.move_on_after(1):
                return (await stream.receive_some(64)).startswith(b"+PONG")
        return False

    async def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop it by PID (SIGKILL by default: what AOF with fsync always survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            with trio.fail_after(10):
                await self.process.wait()
        self.process = None


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A fresh Redis for the block, stopped (and its data removed) after."""
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


class RedisCluster:
    """A Redis Cluster of ``shards`` masters on 127.0.0.1 (no replicas), made by ``redis-cli``."""

    def __init__(self, shards: int = 3) -> None:
        self.servers = [RedisServer(cluster=True) for _ in range(shards)]

    def url(self, prefix: str = "genesis") -> str:
        """The address of one of its nodes, for a Redis Cluster client."""
        return f"{self.servers[0].url}?cluster=yes&prefix={prefix}"

    async def start(self) -> None:
        """Start every shard, join them, give each a third of the slots; wait until it is up."""
        for server in self.servers:
            await server.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            redis_server_binary()  # the same skip, or failure under CI
            pytest.fail("redis-cli is missing (it comes with redis-server)")
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        argv = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]!r}")
        with trio.fail_after(20):
            for server in self.servers:
                while b"cluster_state:ok" not in await self._info(cli, server.port):  # noqa: ASYNC110
                    await trio.sleep(0.05)

    @staticmethod
    async def _info(cli: str, port: int) -> bytes:
        argv = [cli, "-p", str(port), "cluster", "info"]
        done = await trio.run_process(argv, capture_stdout=True, check=False)
        return bytes(done.stdout)

    async def key_counts(self) -> list[int]:
        """How many keys each shard holds."""
        cli = shutil.which("redis-cli")
        assert cli is not None
        counts = []
        for server in self.servers:
            argv = [cli, "-p", str(server.port), "dbsize"]
            counts.append(int((await trio.run_process(argv, capture_stdout=True)).stdout))
        return counts


@contextlib.asynccontextmanager
async def redis_cluster(shards: int = 3) -> AsyncIterator[RedisCluster]:
    """A fresh Redis Cluster for the block, every shard stopped (and its data removed) after."""
    cluster = RedisCluster(shards)
    try:
        await cluster.start()
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            for server in cluster.servers:
                await server.stop()
                shutil.rmtree(server.directory, ignore_errors=True)
