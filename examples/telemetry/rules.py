"""The telemetry demo's rule component: readings in, alarms out, thresholds by request.

Run: ``python examples/telemetry/rules.py [ws://127.0.0.1:8000/ws]``. It
subscribes to ``telemetry.readings``; a reading above the threshold raises
an alarm, published on ``telemetry.alarms`` as ``{"type": "alarm", "data":
{"sensor", "celsius", "threshold", "t"}}``. The dashboard page talks to it by
request/reply (component id ``rules``): ``get_threshold`` returns the
threshold, ``set_threshold`` (data: a number) changes it, ``alarms`` returns
the last 50 alarms.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

import trio

from genesis_trio import Message, TranscendentalWebSocket

READINGS, ALARMS = "telemetry.readings", "telemetry.alarms"


class Rules:
    """The state and the decisions of the rule component (no I/O)."""

    def __init__(self, threshold: float = 35.0) -> None:
        self.threshold = threshold
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)

    def check(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The alarm a reading raises, if any."""
        celsius = float(data.get("celsius", 0.0))
        if celsius <= self.threshold:
            return None
        alarm = {
            "sensor": data.get("sensor"),
            "celsius": celsius,
            "threshold": self.threshold,
            "t": data.get("t"),
        }
        self.recent.append(alarm)
        return alarm

    def set_threshold(self, value: Any) -> float:
        """Change the threshold (a number between -50 and 150)."""
        if not isinstance(value, (int, float)) or not -50 <= value <= 150:
            raise ValueError("the threshold is a number between -50 and 150")
        self.threshold = float(value)
        return self.threshold


async def main(url: str = "ws://127.0.0.1:8000/ws", *, stop_after: int = 0) -> Rules:
    """Run the rules; with ``stop_after`` > 0, return after raising that many alarms."""
    rules = Rules()
    async with TranscendentalWebSocket(url, "rules", topics=[READINGS]) as ws:

        @ws.on("get_threshold")
        async def get_threshold(message: Message) -> float:
            return rules.threshold

        @ws.on("set_threshold")
        async def set_threshold(message: Message) -> float:
            return rules.set_threshold(message.data)

        @ws.on("alarms")
        async def alarms(message: Message) -> list[dict[str, Any]]:
            return list(rules.recent)

        raised = 0
        async for message in ws:
            if message.topic != READINGS or not isinstance(message.data, dict):
                continue
            alarm = rules.check(message.data)
            if alarm is not None:
                await ws.publish(ALARMS, "alarm", alarm)
                raised += 1
                if stop_after and raised >= stop_after:
                    break
    return rules


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:2])
