"""The servers under test and how to start each one."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path


def _max_links() -> int:
    """What the descriptor limit affords the hub (procs.py raises the soft limit to the
    hard one; the hub keeps 64 descriptors for itself and warns, listed as a problem in
    the report, when asked for more). M needs 10 000 links."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 50_000 if hard == resource.RLIM_INFINITY else min(50_000, hard - 64)


HUB = "genesis_trio"
HUB_MEM = "genesis_trio-mem"
HUB_FULL = "genesis_trio-full"
HYPERCORN = "hypercorn-trio"
AIOHTTP = "aiohttp"
WEBSOCKETS = "websockets"
TRIO_WEBSOCKET = "trio-websocket"
SOCKETIO = "python-socketio"
SINK = "c-sink"

SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
"""Engine.IO v4 straight over WebSocket (no long-polling first)."""


@dataclass(frozen=True)
class Target:
    """One server: how to start it and which dialect its clients speak."""

    key: str
    label: str
    dialect: str
    """``raw`` (plain echo / broadcast), ``genesis`` (our protocol) or ``socketio``."""
    module: str | None = None
    """``python -m`` module of a baseline server (None: see :meth:`argv`)."""
    echo_path: str = "/ws"
    bcast_path: str = "/bcast"
    compress_args: tuple[str, ...] = ()
    """Arguments that make the server negotiate permessage-deflate (if not by default)."""

    @property
    def is_hub(self) -> bool:
        """True for our hub (any store)."""
        return self.key in (HUB, HUB_MEM, HUB_FULL)

    def argv(
        self, port: int, state: Path, loadgen: Path | None = None, *, compress: bool = False
    ) -> list[str]:
        """The command that serves on ``127.0.0.1:port``; ``state``: a directory of its own.

        ``compress``: the variant that negotiates permessage-deflate.
        """
        extra = list(self.compress_args) if compress else []
        if self.is_hub:
            store = "none" if self.key == HUB_MEM else f"sqlite:{state / 'sessions.sqlite3'}"
            if self.key == HUB_FULL:
                extra += ["--store-sync", "full"]
            return [
                sys.executable, "-m", "genesis_trio", "serve",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "--max-connections", str(_max_links()), "--max-connections-per-address", "50000",
                "--store", store, *extra,
            ]  # fmt: skip
        if self.key == SINK:
            assert loadgen is not None
            return [str(loadgen), "sink", "--port", str(port)]
        assert self.module is not None
        return [sys.executable, "-m", self.module, "--port", str(port), *extra]


TARGETS: dict[str, Target] = {
    t.key: t
    for t in (
        Target(
            HYPERCORN, "Hypercorn-Trio, raw ASGI echo", "raw", "bench.servers.hypercorn_trio_echo"
        ),
        Target(AIOHTTP, "aiohttp", "raw", "bench.servers.aiohttp_echo"),
        Target(
            WEBSOCKETS,
            "websockets (asyncio)",
            "raw",
            "bench.servers.websockets_echo",
            compress_args=("--compress",),
        ),
        Target(TRIO_WEBSOCKET, "trio-websocket", "raw", "bench.servers.trio_websocket_echo"),
        Target(
            SOCKETIO,
            "python-socketio (ASGI on uvicorn)",
            "socketio",
            "bench.servers.socketio_echo",
            echo_path=SOCKETIO_PATH,
            bcast_path=SOCKETIO_PATH,
        ),
        Target(HUB, "genesis_trio hub (SQLite store)", "genesis", bcast_path="/ws"),
        Target(HUB_MEM, "genesis_trio hub (--store none)", "genesis", bcast_path="/ws"),
        Target(
            HUB_FULL, "genesis_trio hub (SQLite, --store-sync full)", "genesis", bcast_path="/ws"
        ),
        Target(SINK, "C echo sink (generator ceiling)", "raw"),
    )
}
BASELINES = (HYPERCORN, AIOHTTP, WEBSOCKETS, TRIO_WEBSOCKET, SOCKETIO)
DEFLATE_TARGETS = (HYPERCORN, AIOHTTP, WEBSOCKETS, HUB, HUB_MEM)
"""Servers measured with permessage-deflate negotiated (B 64 B and D)."""
DEFLATE_MEMORY_TARGETS = (AIOHTTP, HUB)
"""Servers whose memory per idle link is also measured with deflate negotiated."""
