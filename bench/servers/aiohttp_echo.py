"""aiohttp WebSocket echo/broadcast server (asyncio's default event loop).

The broadcast path is aiohttp's idiom: ``await peer.send_str(...)`` for each
other connection, which only waits when a peer's transport buffer is full.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web

from bench.servers._args import parse_port

MAX_SIZE = 16 * 1024 * 1024


def make_app() -> web.Application:
    """``/ws`` echoes, ``/bcast`` broadcasts to the other ``/bcast`` connections."""
    peers: set[web.WebSocketResponse] = set()

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def bcast(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        peers.add(ws)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                for peer in list(peers):
                    if peer is not ws and not peer.closed:
                        try:
                            await peer.send_str(msg.data)
                        except ConnectionError:
                            peers.discard(peer)
        finally:
            peers.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/bcast", bcast)
    return app


def main() -> None:
    """Serve until killed."""
    web.run_app(
        make_app(), host="127.0.0.1", port=parse_port(__doc__ or ""), print=None, access_log=None
    )


if __name__ == "__main__":
    main()
