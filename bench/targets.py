"""The servers under test and how to start each one."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

HUB = "genesis_trio"
HUB_MEM = "genesis_trio-mem"
HYPERCORN = "hypercorn-trio"
AIOHTTP = "aiohttp"
WEBSOCKETS = "websockets"
SINK = "c-sink"


@dataclass(frozen=True)
class Target:
    """One server: how to start it and which dialect its clients speak."""

    key: str
    label: str
    dialect: str
    """``raw`` (plain echo / broadcast) or ``genesis`` (our protocol)."""
    module: str | None = None
    """``python -m`` module of a baseline server (None: see :meth:`argv`)."""
    echo_path: str = "/ws"
    bcast_path: str = "/bcast"

    @property
    def is_hub(self) -> bool:
        """True for our hub (either store)."""
        return self.key in (HUB, HUB_MEM)

    def argv(self, port: int, state: Path, loadgen: Path | None = None) -> list[str]:
        """The command that serves on ``127.0.0.1:port``; ``state``: a directory of its own."""
        if self.is_hub:
            store = "none" if self.key == HUB_MEM else f"sqlite:{state / 'sessions.sqlite3'}"
            return [
                sys.executable, "-m", "genesis_trio", "serve",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "--max-connections", "50000", "--max-connections-per-address", "50000",
                "--store", store,
            ]  # fmt: skip
        if self.key == SINK:
            assert loadgen is not None
            return [str(loadgen), "sink", "--port", str(port)]
        assert self.module is not None
        return [sys.executable, "-m", self.module, "--port", str(port)]


TARGETS: dict[str, Target] = {
    t.key: t
    for t in (
        Target(
            HYPERCORN, "Hypercorn-Trio, raw ASGI echo", "raw", "bench.servers.hypercorn_trio_echo"
        ),
        Target(AIOHTTP, "aiohttp", "raw", "bench.servers.aiohttp_echo"),
        Target(WEBSOCKETS, "websockets (asyncio)", "raw", "bench.servers.websockets_echo"),
        Target(HUB, "genesis_trio hub (SQLite store)", "genesis", bcast_path="/ws"),
        Target(HUB_MEM, "genesis_trio hub (--store none)", "genesis", bcast_path="/ws"),
        Target(SINK, "C echo sink (generator ceiling)", "raw"),
    )
}
BASELINES = (HYPERCORN, AIOHTTP, WEBSOCKETS)
