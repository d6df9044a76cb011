"""Drive OUR Python client (``TranscendentalWebSocket``) against the hub.

Run as its own process (pinned to the client core by the harness)::

    python -m bench.pyclient echo    --url ws://127.0.0.1:P/ws --duration 3 --warmup 0.5
    python -m bench.pyclient publish --url ws://127.0.0.1:P/ws --run-for 6

``echo``: one client sends messages to itself as fast as ``await ws.send()``
allows and counts what ``await ws.receive()`` hands back (workload B with our
client). ``publish``: one client publishes to topic ``bench`` as fast as
``send`` allows for ``--run-for`` seconds (workload D; the load generator's
subscribers count deliveries). Prints one JSON line with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

from genesis_trio import Disconnected, LinkEvent, TranscendentalWebSocket


class LinkLog:
    """Counts why links went down (reported with the results)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, event: LinkEvent) -> None:
        if isinstance(event, Disconnected):
            why = f"{int(event.code)} {event.reason}".strip()
            self.counts[why] = self.counts.get(why, 0) + 1

    @property
    def closes(self) -> list[str]:
        """One entry per distinct close code and reason, with its count."""
        return [f"{why} (x{n})" for why, n in self.counts.items()]


def _stats(ws: TranscendentalWebSocket) -> dict[str, Any]:
    s = ws.statistics()
    return {
        "messages_sent": s.messages_sent,
        "frames_sent": s.frames_sent,
        "collapse_factor": s.collapse_factor,
        "messages_received": s.messages_received,
        "reconnects": s.reconnects,
        "error_frames": s.error_frames,
    }


async def echo(url: str, size: int, warmup: float, duration: float) -> dict[str, Any]:
    """Self-addressed messages, as fast as ``send`` allows; rate of receipts."""
    payload = "x" * size
    received = 0
    links = LinkLog()
    cid = f"py-echo-{os.getpid()}"
    async with TranscendentalWebSocket(url, cid, codec="json", on_link_event=links) as ws:
        me = ws.component_id

        async def sender() -> None:
            while True:
                await ws.send(me, "e", payload)

        async def receiver() -> None:
            nonlocal received
            while True:
                await ws.receive()
                received += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(sender)
            await trio.sleep(warmup)
            before, sent0, frames0 = received, ws.statistics().messages_sent, _frames(ws)
            print("mark start", flush=True)  # the harness samples the hub's CPU time
            cpu0, t0 = time.process_time(), time.monotonic()
            await trio.sleep(duration)
            count, seconds = received - before, time.monotonic() - t0
            cpu = time.process_time() - cpu0
            print("mark end", flush=True)
            sent, frames = ws.statistics().messages_sent - sent0, _frames(ws) - frames0
            nursery.cancel_scope.cancel()
        result = {
            "ok": received > 0,
            "messages": count,
            "seconds": seconds,
            "rate": count / seconds,
            "cpu": cpu / seconds,
            "window_collapse": sent / frames if frames else None,
            "link_closes": links.closes,
            **_stats(ws),
        }
        return result


def _frames(ws: TranscendentalWebSocket) -> int:
    return ws.statistics().frames_sent


async def publish(url: str, size: int, run_for: float) -> dict[str, Any]:
    """Publish to ``bench`` as fast as ``send`` allows, for ``run_for`` seconds."""
    payload = "x" * size
    links = LinkLog()
    cid = f"py-pub-{os.getpid()}"
    async with TranscendentalWebSocket(url, cid, codec="json", on_link_event=links) as ws:
        cpu0, t0 = time.process_time(), time.monotonic()
        with trio.move_on_after(run_for):
            while True:
                await ws.publish("bench", "e", payload)
        seconds = time.monotonic() - t0
        stats = _stats(ws)
        return {
            "ok": stats["messages_sent"] > 0,
            "seconds": seconds,
            "publish_rate": stats["messages_sent"] / seconds,
            "cpu": (time.process_time() - cpu0) / seconds,
            "link_closes": links.closes,
            **stats,
        }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one scenario, print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenario", choices=["echo", "publish"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--run-for", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.scenario == "echo":
        result = trio.run(echo, args.url, args.size, args.warmup, args.duration)
    else:
        result = trio.run(publish, args.url, args.size, args.run_for)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
