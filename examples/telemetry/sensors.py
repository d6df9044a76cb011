"""Simulated sensors for the telemetry demo: N sensors publishing readings.

Run: ``python examples/telemetry/sensors.py [ws://127.0.0.1:8000/ws] [N] [HZ]``
(default 50 sensors at 10 Hz). Each sensor is one component ``sensor-<i>``
publishing ``{"type": "reading", "data": {"sensor", "t", "celsius"}}`` on the
topic ``telemetry.readings``: a slow sine wave per sensor plus noise, and
now and then a spike that the rule component (``rules.py``) turns into an
alarm. All sensors share one Trio scheduler; each keeps its own session, so
a hub restart costs them nothing.
"""

from __future__ import annotations

import math
import random
import sys
import time

import trio

from genesis_trio import TranscendentalWebSocket

TOPIC = "telemetry.readings"


def reading(sensor: int, t: float, rng: random.Random) -> float:
    """The temperature sensor ``sensor`` reads at time ``t``."""
    base = 20.0 + 5.0 * math.sin(t / 20.0 + sensor)
    spike = 25.0 if rng.random() < 0.002 else 0.0
    return round(base + rng.gauss(0.0, 0.3) + spike, 2)


async def sensor(url: str, index: int, hz: float, count: int) -> None:
    """One sensor: ``count`` readings (0: forever) at ``hz``."""
    rng = random.Random(index)
    name = f"sensor-{index}"
    async with TranscendentalWebSocket(url, name) as ws:
        sent = 0
        next_at = trio.current_time()
        while count == 0 or sent < count:
            now = time.time()
            data = {"sensor": name, "t": now, "celsius": reading(index, now, rng)}
            await ws.publish(TOPIC, "reading", data)
            sent += 1
            next_at += 1.0 / hz
            await trio.sleep_until(next_at)
        await ws.flush()


async def main(
    url: str = "ws://127.0.0.1:8000/ws", n: int = 50, hz: float = 10.0, count: int = 0
) -> None:
    """Run ``n`` sensors (``count`` readings each; 0: until interrupted)."""
    async with trio.open_nursery() as nursery:
        for i in range(int(n)):
            nursery.start_soon(sensor, url, i, float(hz), count)


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(main, args[0] if args else "ws://127.0.0.1:8000/ws", *(float(a) for a in args[1:3]))
