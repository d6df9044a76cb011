"""Everything the demos need, in one program: ``nox -s demo`` (or ``python examples/demo.py``).

Starts a hub with its HTTP API and demo pages on 127.0.0.1:8000 (``--port``),
the chat bot (room ``lobby``), the telemetry rule component and the
simulated sensors (50 at 10 Hz; ``--sensors N``, ``--hz F``), all on one Trio
scheduler, and prints where to point a browser. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import signal
from types import ModuleType

import trio

from genesis_trio import GenesisHybridSystem

HERE = pathlib.Path(__file__).resolve().parent


def _load(relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_"), HERE / relative)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def main(port: int, sensors: int, hz: float) -> None:
    """Serve the demos until Ctrl-C or SIGTERM."""
    bot, rules, readings = (
        _load("chat/bot.py"),
        _load("telemetry/rules.py"),
        _load("telemetry/sensors.py"),
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with GenesisHybridSystem(port=port) as system, trio.open_nursery() as nursery:
            assert system.info is not None
            ws, http = system.info.ws_url, system.info.http_url
            nursery.start_soon(bot.main, ws, "lobby")
            nursery.start_soon(rules.main, ws)
            nursery.start_soon(readings.main, ws, sensors, hz)
            print(f"chat:      {http}/demo/chat   (open it in two tabs; the bot is in 'lobby')")
            print(f"telemetry: {http}/demo/telemetry")
            print(f"dashboard: {http}/dashboard")
            print(f"API:       {http}/api/openapi.json    (Ctrl-C stops everything)", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--hz", type=float, default=10.0)
    args = parser.parse_args()
    trio.run(main, args.port, args.sensors, args.hz)
