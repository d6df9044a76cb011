"""A publisher and a subscriber; restart the hub meanwhile and nothing is lost.

Run a hub, then: python examples/pubsub.py [ws://127.0.0.1:8000/ws]
With the default SQLite store, stop and restart the hub while this runs:
both clients reconnect, resume, and every number arrives exactly once, in order.
"""

from __future__ import annotations

import sys

import trio

from genesis_trio import LinkEvent, TranscendentalWebSocket

COUNT = 200
INTERVAL = 0.05


async def main(url: str) -> None:
    def report(event: LinkEvent) -> None:
        print("  link:", event)

    async with (
        TranscendentalWebSocket(url, "ticker", on_link_event=report) as ticker,
        TranscendentalWebSocket(url, "watcher", topics=["ticks"], on_link_event=report) as watcher,
    ):

        async def publish() -> None:
            for n in range(COUNT):
                await ticker.publish("ticks", "tick", n)
                await trio.sleep(INTERVAL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            got: list[int] = []
            while len(got) < COUNT:
                got.append((await watcher.receive()).data)
                if len(got) % 20 == 0:
                    print(f"received {len(got)} ticks")
        assert got == list(range(COUNT)), "lost, duplicated or reordered"
        print("all ticks received exactly once, in order")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/ws")
