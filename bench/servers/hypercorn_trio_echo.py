"""A bare ASGI WebSocket echo/broadcast app on Hypercorn's Trio worker.

This is the floor under genesis_trio: the same server stack with no hub
logic at all. The broadcast path awaits one ASGI ``send`` per subscriber, in
turn, in the publisher's task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from bench.servers._args import parse_port

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

MAX_SIZE = 16 * 1024 * 1024


def make_app() -> Callable[[Message, Receive, Send], Awaitable[None]]:
    """The ASGI app: ``/ws`` echoes, ``/bcast`` broadcasts to the others."""
    peers: set[Send] = set()

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        broadcast = scope["path"] == "/bcast"
        if broadcast:
            peers.add(send)
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                text = message.get("text")
                out: Message = (
                    {"type": "websocket.send", "text": text}
                    if text is not None
                    else {"type": "websocket.send", "bytes": message.get("bytes")}
                )
                if not broadcast:
                    await send(out)
                    continue
                for peer in list(peers):
                    if peer is not send:
                        try:
                            await peer(out)
                        except Exception:  # a subscriber that left: skip it
                            peers.discard(peer)
        finally:
            peers.discard(send)

    return app


def main() -> None:
    """Serve until killed."""
    config = Config()
    config.bind = [f"127.0.0.1:{parse_port(__doc__ or '')}"]
    config.accesslog = None
    config.websocket_max_message_size = MAX_SIZE
    trio.run(serve, make_app(), config)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
