"""In-process components against loopback clients, in ONE process (workload ``local``).

The hub (``--store none``, served on ``127.0.0.1`` like ``genesis-trio serve``)
and its load run in the same Trio program, pinned by the harness to one
core. The load is either our network client over loopback (``--via
loopback``: ``TranscendentalWebSocket`` connected to the hub's own port) or
an in-process component (``--via local``: ``hub.local(...)``), with the
same code::

    python -m bench.inproc echo    --via local    --size 64 --duration 3 --warmup 0.5
    python -m bench.inproc request --via loopback --duration 3 --warmup 0.5

``echo``: one component sends to itself as fast as ``await send()`` allows
and counts what ``await receive()`` returns (py-B's shape). ``request``:
component ``a`` asks component ``b`` (a handler that returns the data), one
request in flight; round trips/s and latency. Prints ``mark start`` /
``mark end`` around the measurement window and then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import trio

from bench.procs import machine_busy_seconds
from bench.pyclient import LinkLog
from genesis_trio import (
    GenesisHybridSystem,
    LocalComponent,
    Message,
    TranscendentalExternalWebSocket,
    TranscendentalWebSocket,
)

VIAS = ("loopback", "local")


class Component(Protocol):
    """What both kinds of component offer (the shared API)."""

    @property
    def component_id(self) -> str: ...

    async def send(self, to: str, type: str, data: Any = None) -> int: ...

    async def request(self, to: str, type: str, data: Any = None) -> Any: ...

    async def receive(self) -> Message: ...

    def add_handler(self, type: str, handler: Callable[[Message], Any]) -> None: ...


class Window:
    """The measurement window: wall time, our CPU, every other process's CPU."""

    def start(self) -> None:
        print("mark start", flush=True)
        self.t0, self.cpu0, self.busy0 = time.monotonic(), time.process_time(), _busy()

    def stop(self) -> dict[str, float]:
        t1, cpu1, busy1 = time.monotonic(), time.process_time(), _busy()
        print("mark end", flush=True)
        seconds = t1 - self.t0
        cpu = (cpu1 - self.cpu0) / seconds
        out = {"seconds": seconds, "cpu": cpu}
        if busy1 is not None and self.busy0 is not None:
            out["foreign_cpu"] = max(0.0, (busy1 - self.busy0) / seconds - cpu)
        return out


def _busy() -> float | None:
    try:
        return machine_busy_seconds()
    except (OSError, ValueError):
        return None


@asynccontextmanager
async def components(
    system: GenesisHybridSystem, via: str, ids: list[str], codec: str, links: LinkLog
) -> AsyncIterator[list[Component]]:
    """Start one component per id, of the chosen kind, and close them after."""
    async with AsyncExitStack() as stack:
        started: list[Component] = []
        for cid in ids:
            if via == "local":
                local: LocalComponent = system.local(cid)
                started.append(await stack.enter_async_context(local))
            else:
                assert system.info is not None
                client = TranscendentalWebSocket(
                    system.info.ws_url, cid, codec=codec, on_link_event=links
                )
                started.append(await stack.enter_async_context(client))
        yield started


async def echo(comps: list[Component], size: int, warmup: float, duration: float) -> dict[str, Any]:
    """Self-addressed messages as fast as ``send`` allows; the rate of receipts."""
    (me,) = comps
    payload = "x" * size
    to = me.component_id
    received = 0

    async def sender() -> None:
        while True:
            await me.send(to, "e", payload)

    async def receiver() -> None:
        nonlocal received
        while True:
            await me.receive()
            received += 1

    window = Window()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(sender)
        await trio.sleep(warmup)
        before = received
        window.start()
        await trio.sleep(duration)
        count = received - before
        result = window.stop()
        nursery.cancel_scope.cancel()
    return {"messages": count, "rate": count / result["seconds"], **result}


async def request(
    comps: list[Component], size: int, warmup: float, duration: float
) -> dict[str, Any]:
    """``a`` asks ``b``, one request in flight; round trips/s and latency."""
    a, b = comps
    payload = "x" * size
    to = b.component_id

    async def answer(message: Message) -> Any:
        return message.data

    b.add_handler("e", answer)
    latencies: list[float] = []
    window = Window()
    clock = time.perf_counter
    with trio.move_on_after(warmup):
        while True:
            await a.request(to, "e", payload)
    window.start()
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t = clock()
        await a.request(to, "e", payload)
        latencies.append(clock() - t)
    result = window.stop()
    latencies.sort()
    n = len(latencies)
    return {
        "messages": n,
        "rate": n / result["seconds"],
        "p50_us": latencies[n // 2] * 1e6 if n else None,
        "p99_us": latencies[min(n - 1, n * 99 // 100)] * 1e6 if n else None,
        **result,
    }


def _stats(comps: list[Component]) -> dict[str, Any]:
    """Each component's counters (the client's also frames and link trouble)."""
    out: dict[str, Any] = {}
    for comp in comps:
        entry: dict[str, Any]
        if isinstance(comp, TranscendentalWebSocket):
            c = comp.statistics()
            entry = {
                "messages_sent": c.messages_sent,
                "messages_received": c.messages_received,
                "errors_contained": c.errors_contained,
                "frames_sent": c.frames_sent,
                "collapse_factor": c.collapse_factor,
                "reconnects": c.reconnects,
                "error_frames": c.error_frames,
            }
        else:
            assert isinstance(comp, LocalComponent)
            s = comp.statistics()
            entry = {
                "messages_sent": s.messages_sent,
                "messages_received": s.messages_received,
                "errors_contained": s.errors_contained,
            }
        out[comp.component_id] = entry
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Serve a hub (no store), start the components, measure one scenario."""
    hub = TranscendentalExternalWebSocket()  # no store: sessions in memory only
    system = GenesisHybridSystem(hub, host="127.0.0.1", port=0, gc_tuning=args.gc_tuning == "on")
    tag = f"{os.getpid()}"
    scenario = echo if args.scenario == "echo" else request
    ids = [f"inproc-{tag}"] if args.scenario == "echo" else [f"ask-{tag}", f"answer-{tag}"]
    links = LinkLog()
    async with system:
        async with components(system, args.via, ids, args.codec, links) as comps:
            result = await scenario(comps, args.size, args.warmup, args.duration)
            result["components"] = _stats(comps)
        hub_stats = hub.get_stats()
    result.update(
        ok=result["messages"] > 0,
        rate_per_cpu=result["rate"] / result["cpu"] if result["cpu"] > 0 else None,
        via=args.via,
        scenario=args.scenario,
        size=args.size,
        hub_messages_in=hub_stats.get("messages_in"),
        hub_messages_out=hub_stats.get("messages_out"),
        link_closes=links.closes,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one scenario, print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenario", choices=["echo", "request"])
    parser.add_argument("--via", choices=VIAS, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--codec", choices=["json", "msgpack"], default="json")
    parser.add_argument(
        "--gc-tuning",
        choices=["on", "off"],
        default="on",
        help="as genesis-trio serve (default on)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = trio.run(run, args)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
