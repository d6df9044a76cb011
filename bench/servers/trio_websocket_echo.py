"""trio-websocket echo/broadcast server (``trio_websocket.serve_websocket``).

trio-websocket is wsproto under a Trio API, one task per connection, without
extensions (it never negotiates permessage-deflate). ``/ws`` echoes with
``await ws.send_message(...)``; ``/bcast`` awaits one ``send_message`` per
other ``/bcast`` connection, in turn, in the publisher's task (the idiom).
Defaults otherwise (a receive queue of one message).
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from bench.servers._args import parse_port

MAX_SIZE = 16 * 1024 * 1024


async def main(port: int) -> None:
    """Serve until killed (an exception, so exit status 1, if the port cannot be bound)."""
    peers: set[WebSocketConnection] = set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        if request.path != "/bcast":
            try:
                while True:
                    await ws.send_message(await ws.get_message())
            except ConnectionClosed:
                return
        peers.add(ws)
        try:
            while True:
                message = await ws.get_message()
                for peer in list(peers):
                    if peer is not ws:
                        try:
                            await peer.send_message(message)
                        except ConnectionClosed:  # a subscriber that left: skip it
                            peers.discard(peer)
        except ConnectionClosed:
            pass
        finally:
            peers.discard(ws)

    await serve_websocket(handler, "127.0.0.1", port, None, max_message_size=MAX_SIZE)


if __name__ == "__main__":
    trio.run(main, parse_port(__doc__ or ""))
