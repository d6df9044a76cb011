"""A chat bot: a Python component that joins a room of the chat demo and answers.

Run: ``python examples/chat/bot.py [ws://127.0.0.1:8000/ws] [room]`` (the hub
with ``--demos`` serves the chat page at ``/demo/chat``). It speaks the chat
page's message shapes: a room is the topic ``chat.<room>``; a line is
``{"type": "say", "data": {"name", "text"}}``. The bot greets people who
join (it watches ``$presence``), answers ``!help``, ``!time`` and ``!who``,
and echoes anything addressed to it ("bot: ...").
"""

from __future__ import annotations

import sys
import time
from typing import Any

import trio

from genesis_trio import PRESENCE_TOPIC, Message, TranscendentalWebSocket

BOT = "chat-bot"


def room_topic(room: str) -> str:
    """The topic of a chat room."""
    return f"chat.{room}"


def answer(text: str, who: list[str]) -> str | None:
    """The bot's answer to a line, or None."""
    words = text.strip()
    if words == "!help":
        return "I answer !time, !who, and anything that starts with 'bot:'"
    if words == "!time":
        return time.strftime("it is %H:%M:%S UTC", time.gmtime())
    if words == "!who":
        return "here: " + ", ".join(who)
    if words.lower().startswith("bot:"):
        return f"you said {words[4:].strip()!r}"
    return None


async def main(url: str = "ws://127.0.0.1:8000/ws", room: str = "lobby", *, lines: int = 0) -> int:
    """Serve the room; with ``lines`` > 0, stop after answering that many (for tests)."""
    topic = room_topic(room)
    answered = 0
    async with TranscendentalWebSocket(url, BOT, topics=[topic, PRESENCE_TOPIC]) as ws:
        await ws.publish(topic, "say", {"name": "bot", "text": "hello, I am the bot (!help)"})
        async for message in ws:
            reply = await react(ws, topic, message)
            if reply:
                answered += 1
                if lines and answered >= lines:
                    return answered
    return answered


async def react(ws: TranscendentalWebSocket, topic: str, message: Message) -> bool:
    """Answer one message of the room (or greet a newcomer); True if the bot spoke."""
    data: Any = message.data
    if message.topic == PRESENCE_TOPIC:
        joined = data.get("event") == "connected" and data.get("id") != ws.component_id
        if joined and topic in data.get("topics", ()):
            name = data["id"]
            await ws.publish(topic, "say", {"name": "bot", "text": f"welcome, {name}!"})
            return True
        return False
    if message.type != "say" or not isinstance(data, dict) or data.get("name") == "bot":
        return False
    members = [m["id"] for m in await ws.presence(topic)]
    text = answer(str(data.get("text", "")), members)
    if text is None:
        return False
    await ws.publish(topic, "say", {"name": "bot", "text": text})
    return True


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
