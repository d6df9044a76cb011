"""A hub inside your own Trio program, with a handler for messages to "$hub".

Run: python examples/embedded_hub.py   (serves ws://127.0.0.1:8765/ws; Ctrl-C stops)
"""

from __future__ import annotations

import trio

from genesis_trio import GenesisHybridSystem, Message, TranscendentalExternalWebSocket


async def main() -> None:
    hub = TranscendentalExternalWebSocket(node_id="embedded")

    @hub.on("time")
    async def now(message: Message) -> float:
        return trio.current_time()

    system = GenesisHybridSystem(hub, port=8765)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(system.run)
        print(f"hub at {info.ws_url}; try: request('$hub', 'time')")
        while True:
            await trio.sleep(10)
            print("stats:", {k: v for k, v in hub.get_stats().items() if v})


if __name__ == "__main__":
    trio.run(main)
