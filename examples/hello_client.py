"""Two components in one process: a calculator and its user.

Run a hub, then: python examples/hello_client.py [ws://127.0.0.1:8000/ws]
"""

from __future__ import annotations

import sys

import trio

from genesis_trio import Message, TranscendentalWebSocket


async def main(url: str) -> None:
    async with (
        TranscendentalWebSocket(url, "calculator") as calculator,
        TranscendentalWebSocket(url, "user") as user,
    ):

        @calculator.on("add")
        async def add(message: Message) -> int:
            return int(message.data["a"]) + int(message.data["b"])

        print("2 + 40 =", await user.request("calculator", "add", {"a": 2, "b": 40}, timeout=5))
        await user.send("calculator", "note", "no handler for this type")
        note = await calculator.receive()  # types without a handler queue here
        print(f"calculator got {note.type!r} from {note.sender!r}: {note.data}")
        print("user stats:", user.get_stats())


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/ws")
